"""EfficientNet-Lite0 with the ImageNet weights a pip package ships: conversion from
PyTorch without torch, an unpickler that runs nothing, the checksum-keyed cache."""

import ast
import collections
import hashlib
import importlib.util
import logging
import os
import pickle
import pickletools
import types
import zipfile
from pathlib import Path

import keras
import matplotlib
import numpy as np
import pytest
import sklearn
from PIL import Image

from harr_tf.backbones import build_backbone
from harr_tf.efficientnet_lite import (
    LitePreprocess,
    efficientnet_lite_backbone,
    efficientnet_lite_classifier,
    lite_network,
    load_state_dict_into,
)
from harr_tf.layers import HashHead
from harr_tf.offline_weights import cache_directory, offline_weights_file
from harr_tf.torch_checkpoint import LEGACY_MAGIC, LEGACY_PROTOCOL, CheckpointError, load_state_dict

SOURCE = offline_weights_file("efficientnet_lite0")
MILITARY_UNIFORM, DAISY = 652, 985
GRACE_HOPPER = Path(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
FLOWER = Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg"


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    """One conversion for the module, in a cache of its own (never ~/.keras)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARR_CACHE", str(tmp_path_factory.mktemp("harr_cache")))
        yield Path(os.environ["HARR_CACHE"])


@pytest.fixture(scope="module")
def state():
    return load_state_dict(SOURCE)


# A writer of PyTorch's legacy format, from pickle alone, naming the same globals torch does.
class _Storage:
    def __init__(self, array, claimed_size=None):
        self.array = np.ascontiguousarray(array, np.float32).reshape(-1)
        self.claimed_size = claimed_size or self.array.size  # what the object pickle says


class _Tensor:
    def __init__(self, array, stride=None, offset=0, storage=None, state=None):
        self.state = state  # a BUILD of the rebuilt tensor, which torch never writes
        self.shape = tuple(np.shape(array))
        self.storage = storage or _Storage(array)
        self.stride = stride or tuple(int(s) // 4 for s in np.zeros(self.shape, "f4").strides)
        self.offset = offset

    def __reduce__(self):
        args = (
            self.storage,
            self.offset,
            self.shape,
            self.stride,
            False,
            collections.OrderedDict(),
        )
        return (_rebuild_tensor_v2, args) + ((self.state,) if self.state else ())


def _rebuild_tensor_v2(*args):
    raise AssertionError("never called: only its name is written")


class FloatStorage:
    pass


_TORCH_GLOBALS = {
    _rebuild_tensor_v2: ("torch._utils", "_rebuild_tensor_v2"),
    FloatStorage: ("torch", "FloatStorage"),
}


class _TorchPickler(pickle._Pickler):
    def __init__(self, file, storages):
        super().__init__(file, protocol=2)
        self.storages = storages

    def save_global(self, obj, name=None):
        if obj not in _TORCH_GLOBALS:
            return super().save_global(obj, name)
        module, name = _TORCH_GLOBALS[obj]
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    # The pure-Python pickler looks functions and classes up here, not by method.
    dispatch = {**pickle._Pickler.dispatch, types.FunctionType: save_global, type: save_global}

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        key = str(id(obj))
        self.storages[key] = obj
        return ("storage", FloatStorage, key, "cpu", obj.claimed_size, None)


def _wrap_tensors(tensors: dict) -> collections.OrderedDict:
    return collections.OrderedDict(
        (k, v if isinstance(v, _Tensor) else _Tensor(v)) for k, v in tensors.items()
    )


def write_legacy_pth(path, tensors: dict, payload=None) -> None:
    """A legacy `.pth` of `tensors` (name -> array or _Tensor); `payload` replaces them."""
    storages: dict[str, _Storage] = {}
    with open(path, "wb") as file:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, file, protocol=2)
        _TorchPickler(file, storages).dump(
            payload if payload is not None else _wrap_tensors(tensors)
        )
        keys = sorted(storages)
        pickle.dump(keys, file, protocol=2)
        for key in keys:
            file.write(storages[key].array.size.to_bytes(8, "little"))
            file.write(storages[key].array.tobytes())


def _imagenet_names() -> list[str]:
    """The 1,000 ImageNet class names, in index order, as tensorflow-datasets ships them."""
    root = importlib.util.find_spec("tensorflow_datasets").submodule_search_locations[0]
    tree = ast.parse(Path(root, "datasets", "siscore", "labels.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "IMAGENET_LABELS_LIST":
            return ast.literal_eval(node.value)
    raise AssertionError("IMAGENET_LABELS_LIST not found in tensorflow-datasets")


def _photo(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype="float32")


@pytest.mark.parametrize(
    ("photo", "index", "name"),
    [
        (GRACE_HOPPER, MILITARY_UNIFORM, "military uniform"),
        (FLOWER, DAISY, "daisy"),
    ],
)
def test_converted_classifier_names_sample_photos(photo, index, name):
    """Whole photos at their own size, resized and normalised inside the model."""
    pixels = _photo(photo)
    classifier = efficientnet_lite_classifier(pixels.shape)
    logits = keras.ops.convert_to_numpy(classifier(pixels[None]))[0]
    names = _imagenet_names()
    assert names[index] == name
    assert names[int(np.argmax(logits))] == name


def test_the_wheel_holds_every_weight_of_lite0(state):
    network = lite_network()
    counted = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert counted == network.count_params() == 4_694_024


def test_a_pth_naming_os_system_is_refused_before_anything_runs(tmp_path):
    sentinel = tmp_path / "SENTINEL"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {sentinel}",)

    path = tmp_path / "evil.pth"
    write_legacy_pth(path, {}, payload=collections.OrderedDict(weight=Payload()))
    with pytest.raises(CheckpointError, match=r"names the global (os|posix)\.system") as error:
        load_state_dict(path)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="refusing"):
        build_backbone("efficientnet_lite0", (32, 32, 3), weights=str(path))
    assert not sentinel.exists()
    # The file is a real threat: its object pickle calls os.system (read by opcode, never
    # run: the first three pickles are the legacy header).
    with open(path, "rb") as f:
        pickles = [list(pickletools.genops(f)) for _ in range(4)]
    opcodes = [(op.name, arg) for op, arg, _ in pickles[3]]
    assert any(name == "GLOBAL" and arg.endswith(" system") for name, arg in opcodes)
    assert ("REDUCE", None) in opcodes


def test_any_other_global_is_refused(tmp_path):
    path = tmp_path / "eval.pth"
    write_legacy_pth(path, {}, payload={"weight": (eval, ("1 + 1",))})
    with pytest.raises(CheckpointError, match=r"(__builtin__|builtins)\.eval"):
        load_state_dict(path)


def test_a_truncated_or_foreign_file_is_one_line_error(tmp_path):
    data = SOURCE.read_bytes()
    for cut, reason in [
        (len(data) - 1000, "truncated"),
        (20_000, "truncated"),
        (3, "truncated|not a"),
    ]:
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=reason) as error:
            load_state_dict(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_state_dict(text)


def test_legacy_and_zip_formats_round_trip_with_strides(tmp_path):
    base = np.arange(24, dtype="float32").reshape(4, 6)
    storage = _Storage(base)
    tensors = {
        "plain": base,
        "transposed": _Tensor(base.T, stride=(1, 6), storage=storage),
        "offset_row": _Tensor(base[2], stride=(1,), offset=12, storage=storage),
    }
    path = tmp_path / "small.pth"
    write_legacy_pth(path, tensors)
    loaded = load_state_dict(path)
    assert list(loaded) == ["plain", "transposed", "offset_row"]
    np.testing.assert_array_equal(loaded["plain"], base)
    np.testing.assert_array_equal(loaded["transposed"], base.T)
    np.testing.assert_array_equal(loaded["offset_row"], base[2])
    # The zip format (torch >= 1.6): the same object pickle, storages as archive entries.
    storages: dict[str, _Storage] = {}
    pickled = tmp_path / "data.pkl"
    with open(pickled, "wb") as file:
        _TorchPickler(file, storages).dump(_wrap_tensors(tensors))
    zipped = tmp_path / "small_zip.pth"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("small_zip/data.pkl", pickled.read_bytes())
        for key, value in storages.items():
            archive.writestr(f"small_zip/data/{key}", value.array.tobytes())
    for name, array in load_state_dict(zipped).items():
        np.testing.assert_array_equal(array, loaded[name])


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    path = tmp_path / "overrun.pth"
    write_legacy_pth(path, {"w": _Tensor(np.zeros((4, 4)), storage=_Storage(np.zeros(8)))})
    with pytest.raises(CheckpointError, match="past the end"):
        load_state_dict(path)
    # A storage claiming more bytes than the file holds is not read (nor allocated).
    huge = _Storage(np.zeros(8), claimed_size=10**13)
    write_legacy_pth(path, {"w": _Tensor(np.zeros(8), storage=huge)})
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict(path)


def test_a_pickle_setting_a_tensors_attributes_is_refused(tmp_path):
    path = tmp_path / "build.pth"
    write_legacy_pth(path, {"w": _Tensor(np.zeros(4), state={"offset": 10**9})})
    with pytest.raises(CheckpointError, match="sets the state") as error:
        load_state_dict(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "shape",
            r"_blocks\.3\._depthwise_conv\.weight has shape \(144, 1, 3, 3\), "
            r"expected \(144, 1, 5, 5\)",
        ),
        ("missing", r"lacks _blocks\.0\._bn1\.running_var"),
        ("extra", r"_blocks\.16\._project_conv\.weight fits no layer"),
    ],
)
def test_a_state_dict_of_another_network_names_the_first_misfit(tmp_path, state, change, message):
    altered = dict(state)
    if change == "shape":
        altered["_blocks.3._depthwise_conv.weight"] = np.zeros((144, 1, 3, 3), "float32")
    elif change == "missing":
        del altered["_blocks.0._bn1.running_var"]
    else:
        altered["_blocks.16._project_conv.weight"] = np.zeros((8, 8, 1, 1), "float32")
    with pytest.raises(ValueError, match=message) as error:
        load_state_dict_into(lite_network(), altered, "other.pth")
    assert "\n" not in str(error.value)
    if change == "shape":  # the same through `--weights PATH.pth`
        path = tmp_path / "other.pth"
        write_legacy_pth(path, altered)
        with pytest.raises(ValueError, match="is not an efficientnet_lite0 state dict"):
            build_backbone("efficientnet_lite0", (32, 32, 3), weights=str(path))


def _stem(backbone: keras.Model) -> np.ndarray:
    return backbone.get_layer("efficientnet_lite0").get_layer("stem_conv").get_weights()[0]


def test_the_cache_is_keyed_by_the_source_checksum_and_read_back(tmp_path, state, module_cache):
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    cached = module_cache / f"efficientnet_lite0-{digest}.weights.h5"
    expected_stem = state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(
        _stem(build_backbone("efficientnet_lite0", (32, 32, 3), "imagenet")), expected_stem
    )
    assert cached.is_file() and cache_directory() == module_cache
    # The next build reads the cache, not the source: a marked cache entry shows through.
    marked = lite_network()
    marked.load_weights(cached)
    marked.get_layer("stem_conv").set_weights([np.full_like(expected_stem, 0.5)])
    original = cached.read_bytes()
    marked.save_weights(cached)
    try:
        assert np.all(_stem(build_backbone("efficientnet_lite0", (32, 32, 3), "imagenet")) == 0.5)
    finally:
        cached.write_bytes(original)
    # Another source file gets its own entry, converted from the file.
    copy = tmp_path / "lite0_copy.pth"
    write_legacy_pth(copy, state)
    backbone = build_backbone("efficientnet_lite0", (32, 32, 3), weights=str(copy))
    np.testing.assert_array_equal(_stem(backbone), expected_stem)
    entries = sorted(p.name for p in module_cache.glob("efficientnet_lite0-*.weights.h5"))
    assert len(entries) == 2 and cached.name in entries


def test_an_unwritable_cache_converts_in_memory_with_a_warning(
    tmp_path, state, monkeypatch, caplog
):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("HARR_CACHE", str(blocker / "cache"))  # mkdir fails, even for root
    with caplog.at_level(logging.WARNING, logger="harr_tf.offline_weights"):
        backbone = build_backbone("efficientnet_lite0", (32, 32, 3), "imagenet")
    assert "Set HARR_CACHE to a writable directory" in caplog.text
    np.testing.assert_array_equal(_stem(backbone), state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    assert not list(tmp_path.glob("**/*.weights.h5"))


def test_small_grey_images_give_pooled_features_of_their_rgb_copy():
    rng = np.random.default_rng(0)
    grey = rng.uniform(0, 255, (3, 28, 28, 1)).astype("float32")
    backbone = build_backbone("efficientnet_lite0", (28, 28, 1), "imagenet")
    features = keras.ops.convert_to_numpy(backbone(grey))
    assert backbone.name == "backbone" and features.shape == (3, 1280)
    rgb = build_backbone("efficientnet_lite0", (28, 28, 3), "imagenet")
    np.testing.assert_allclose(features, rgb(np.repeat(grey, 3, axis=-1)), rtol=1e-4, atol=1e-4)
    assert np.all(features >= 0) and np.ptp(features, axis=0).max() > 0  # ReLU6, then pooled


def test_an_encoder_round_trips_through_a_keras_file_in_safe_mode(tmp_path):
    backbone = build_backbone("efficientnet_lite0", (40, 40, 1), "imagenet")
    inputs = keras.Input((40, 40, 1), name="pixels")
    encoder = keras.Model(inputs, HashHead(16, name="hash_head")(backbone(inputs)))
    images = np.random.default_rng(1).uniform(0, 255, (2, 40, 40, 1)).astype("float32")
    path = tmp_path / "encoder.keras"
    encoder.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), encoder.predict(images, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_imagenet_for_a_variant_without_offline_weights_names_those_that_have_them():
    with pytest.raises(ValueError, match="the backbones that have them: efficientnet_lite0"):
        offline_weights_file("efficientnet_lite1")


def test_preprocess_matches_numpy_and_round_trips():
    """Grey repeated, resized, (x - 127) / 128: the inputs TensorFlow's Lite was trained on."""
    rng = np.random.default_rng(2)
    grey = rng.uniform(0, 255, (2, 8, 8, 1)).astype("float32")
    layer = LitePreprocess(8)
    expected = (np.repeat(grey, 3, axis=-1) - 127.0) / 128.0
    np.testing.assert_allclose(layer(grey), expected, atol=1e-6)
    clone = LitePreprocess.from_config(layer.get_config())
    assert clone(rng.uniform(0, 255, (1, 5, 7, 3)).astype("float32")).shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="size=0"):
        LitePreprocess(0)


def test_called_without_a_training_flag_batch_norm_uses_its_moving_statistics():
    backbone = build_backbone("efficientnet_lite0", (32, 32, 3), "imagenet")
    images = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(backbone(images), backbone(images, training=False), atol=1e-5)
    assert not np.allclose(backbone(images, training=True), backbone(images), atol=1e-3)


@pytest.mark.parametrize(("side", "network_side"), [(28, 224), (64, 64), (96, 96), (224, 224)])
def test_the_network_runs_at_the_images_size_from_64_pixels(side, network_side):
    """`--image-size 96` runs Lite0 at 96 (five times cheaper than 224 on a CPU); smaller
    images are resized to the 224 it was trained at."""
    backbone = efficientnet_lite_backbone((side, side, 3), "none")
    inner = next(layer for layer in backbone.layers if isinstance(layer, keras.Model))
    assert inner.input_shape == (None, network_side, network_side, 3)
    images = np.random.default_rng(0).uniform(0, 255, (2, side, side, 3)).astype("float32")
    assert backbone(images, training=False).shape == (2, 1280)
