"""Settings a run cannot train with are refused at once, naming the setting; a settings
file that is not YAML gets one line, not a parser traceback."""

import pytest

from harr_tf.config import MIN_BATCH_SIZE, TrainConfig, read_settings_file


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"learning_rate": -1.0}, "learning_rate=-1.0"),
        ({"learning_rate": 0.0}, "learning_rate=0.0"),
        ({"batch_size": 1}, "batch_size=1"),
        ({"batch_size": MIN_BATCH_SIZE - 1}, f"batch_size={MIN_BATCH_SIZE - 1}"),
        ({"bits": (16, 16)}, "bits=(16, 16)"),
        ({"bits": (12,)}, "bits=12"),
        ({"momentum": 1.0}, "momentum=1.0"),
        ({"weight_decay": -1e-5}, "weight_decay=-1e-05"),
        ({"steps_per_epoch": 0}, "steps_per_epoch=0"),
        ({"epochs": 0}, "epochs=0"),
    ],
)
def test_untrainable_settings_are_refused(settings, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**settings)


def test_the_smallest_accepted_batch_trains_against_several_negatives():
    assert TrainConfig(batch_size=MIN_BATCH_SIZE).batch_size == MIN_BATCH_SIZE >= 8


def test_a_settings_file_that_is_not_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: {width: 8\nseed: [1, 2\n")
    with pytest.raises(ValueError) as error:
        read_settings_file(str(path), "--config")
    message = str(error.value)
    assert message.startswith(f"--config {path} is not valid YAML (line ")
    assert "\n" not in message


def test_a_settings_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        read_settings_file(str(path), "--config")
