"""Config: profiles, overrides, and one clear error naming the key for every bad value."""
from pathlib import Path

import pytest
import yaml

from pipeline.config import PipelineConfig, describe, load_config
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, payload) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


@pytest.mark.parametrize("profile", ["quick", "full"])
def test_repository_yaml_loads_in_every_profile(profile):
    cfg = load_config(REPO / "pipeline.yaml", profile=profile)
    assert isinstance(cfg, PipelineConfig) and cfg.profile == profile


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_configs_load_in_every_profile(path):
    """The experiment configs of the README (ACDC) pass the same checks as pipeline.yaml, in each profile."""
    profiles = yaml.safe_load(path.read_text()).get("profiles") or {}
    for profile in profiles or [None]:
        assert isinstance(load_config(path, profile=profile), PipelineConfig)


def test_repository_yaml_documents_every_key():
    text = (REPO / "pipeline.yaml").read_text()
    base = text.split("\nprofiles:")[0]
    documented = {line.split(":")[0].strip() for line in base.splitlines() if "#" in line and ":" in line}
    missing = [key for key, _, _ in describe() if key.split(".")[-1] not in documented]
    assert not missing, f"pipeline.yaml lacks a commented entry for {missing}"


def test_profile_and_overrides_apply_in_order(tmp_path):
    path = _write(tmp_path, {"segmentation": {"steps": 100},
                             "profiles": {"p": {"segmentation": {"steps": 200, "batch_size": 4}}}})
    cfg = load_config(path, profile="p", overrides=["segmentation.steps=300", "experiment.seeds=[5, 6]"])
    assert cfg.segmentation.steps == 300 and cfg.segmentation.batch_size == 4
    assert cfg.experiment.seeds == [5, 6]


@pytest.mark.parametrize("payload, overrides, expected", [
    ({"segmentation": {"stepz": 1}}, [], "unknown key segmentation.stepz"),
    ({"segmentation": {"steps": "many"}}, [], "segmentation.steps = 'many'"),
    ({"experiment": {"fractions": [0.1, 1.5]}}, [], "experiment.fractions[1] = 1.5 is too large"),
    ({"experiment": {"fractions": [0.0]}}, [], "experiment.fractions[0] = 0.0 is too small"),
    ({"experiment": {"arms": ["real", "fake"]}}, [], "experiment.arms[1] = 'fake' is not allowed"),
    ({"experiment": {"generators": ["stylegan"]}}, [], "experiment.generators[0] = 'stylegan'"),
    ({"data": {"preprocess": {"crop_size": 100}}}, [], "crop_size = 100 must be divisible by"),
    ({"data": {"layout": "bids"}}, [], "data.layout = 'bids' is not allowed"),
    ({"segmentation": {"augmentation": "heavy"}}, [], "segmentation.augmentation = 'heavy' is not allowed"),
    ({"synthesis": {"masks": {"source_mix": {"real": 1.0, "drawn": 1.0}}}}, [], "drawn"),
    ({"synthesis": {"gmm": {"tissue_classes": 1}}}, [], "synthesis.gmm.tissue_classes = 1 is not allowed"),
    ({"synthesis": {"masks": {"source_mix": {"sampled": 1.0}}, "gmm": {"tissue_classes": 4}},
      "experiment": {"generators": ["gmm"]}}, [], "synthesis.gmm.tissue_classes needs the real slice"),
    ({"synthesis": {"masks": {"source_mix": {"real": 1.0, "sampled": 1.0}}, "gmm": {"background": "real"}},
      "experiment": {"generators": ["gmm"]}}, [], "synthesis.gmm.background needs the real slice"),
    ({}, ["segmentation.lr"], "expected key=value"),
    ({"profile": "fast"}, [], "unknown profile 'fast'"),
])
def test_bad_values_fail_before_any_work_naming_the_key(tmp_path, payload, overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        load_config(_write(tmp_path, payload), overrides=overrides)


def test_cli_reports_config_error_in_one_line(tmp_path, capsys):
    from pipeline.cli import main

    code = main(["run", str(_write(tmp_path, {"segmentation": {"stepz": 1}})), "--run-dir", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown key segmentation.stepz" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing was started


@pytest.mark.parametrize("payload, overrides, expected", [
    ({}, ["data.label_map={1: 7}"], "--set data.label_map={1: 7}: data.label_map[1] = 7: expected an internal "
                                    "label, one of 0 (background), 1 (RV), 2 (MYO), 3 (LV)"),
    ({"data": {"label_map": {1: 7}}}, [], "cfg.yaml: data.label_map[1] = 7: expected an internal label"),
    ({"data": {"label_map": {300: 1}}}, [], "cfg.yaml: data.label_map key 300: expected a file label value"),
    ({}, ["data.extra_test_sets=[{name: b, label_map: {2: 9}}]"],
     "--set data.extra_test_sets=[{name: b, label_map: {2: 9}}]: data.extra_test_sets[0].label_map[2] = 9"),
    ({}, ["segmentation.steps=-1"], "--set segmentation.steps=-1: segmentation.steps = -1 is too small"),
    ({}, ["segmentation.stepz=1"], "--set segmentation.stepz=1: unknown key segmentation.stepz"),
    ({}, ["segmentation={steps: x}"], "--set segmentation={steps: x}: segmentation.steps = 'x'"),
    ({"segmentation": {"steps": -1}}, ["segmentation.lr=0.1"], "cfg.yaml: segmentation.steps = -1"),
    ({}, ["segmentation.strides=[2]"], "--set segmentation.strides=[2]: segmentation.strides needs one value fewer"),
    ({}, ["experiment.generators=[gmm, stylegan]"],
     "--set experiment.generators=[gmm, stylegan]: experiment.generators[1] = 'stylegan' is not a generator"),
])
def test_an_error_names_the_set_argument_or_the_file_that_gave_the_key(tmp_path, payload, overrides, expected):
    """Issue 17: a bad --set used to be reported as an error of pipeline.yaml."""
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, payload), overrides=overrides)
    message = str(info.value)
    assert message.startswith(expected.replace("cfg.yaml", str(tmp_path / "cfg.yaml"))), message
