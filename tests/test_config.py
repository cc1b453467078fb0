"""Config validation: every mistake is one clear line naming the key and what is allowed."""

import subprocess
import sys
from pathlib import Path

import pytest

from fewstep.config import ConfigError, apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "cd_toy.yaml"


def test_recipe_loads_and_overrides_are_typed():
    config = load_config(RECIPE, ["run.max_steps=7", "optimizers.student.lr=1e-5", "objective.guidance_range=[1, 3]"])
    assert config.run.max_steps == 7
    assert config.optimizers["student"].lr == 1e-5
    assert config.objective.guidance_range == (1.0, 3.0)
    assert config.to_dict()["objective"]["name"] == "cd"


@pytest.mark.parametrize("override, message", [
    ("run.lr=3", "config error: run.lr: unknown key; allowed keys: attention_backend,"),
    ("run.max_steps=abc", "config error: run.max_steps: Input should be a valid integer"),
    ("objective.solver=rk4", "config error: objective.solver: Input should be 'ddim', 'euler' or 'heun'"),
    ("objective.name=nope", "config error: objective.name: 'nope' is not known; allowed: add, cd"),
    ("objective.typo=1", "config error: objective.typo: unknown key; allowed keys:"),
    ("data.kind=nope", "config error: data.kind: 'nope' is not known; allowed:"),
    ("model.kind=unet2d", "config error: data.kind: 'toy' does not fit model.kind='unet2d'"),
    ("run", "config error: override 'run' must look like key.subkey=value"),
])
def test_bad_config_is_one_clear_error(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(RECIPE, [override])
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="no config file at"):
        load_config(ROOT / "configs" / "nope.yaml")


def test_overrides_create_nested_keys_without_touching_input():
    raw = {"run": {"seed": 1}}
    out = apply_overrides(raw, ["run.seed=2", "model.toy.path=vp"])
    assert raw == {"run": {"seed": 1}} and out == {"run": {"seed": 2}, "model": {"toy": {"path": "vp"}}}


def test_cli_bad_key_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fewstep.distill", "--config", str(RECIPE), "run.lr=3"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("config error: run.lr")


def test_help_commands():
    for cmd in (["-m", "fewstep", "--help"], ["-m", "fewstep.distill", "--help"]):
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
    top = subprocess.run([sys.executable, "-m", "fewstep", "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    for sub in ("distill", "demo"):
        assert sub in top


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_recipe_validates(recipe):
    load_config(ROOT / "configs" / recipe)


def test_base_recipe_merges_section_by_section_and_the_file_wins(tmp_path):
    (tmp_path / "parent.yaml").write_text(RECIPE.read_text())
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nrun: {max_steps: 7}\n"
                                         "objective: {guidance_range: [1, 3]}\n")
    parent, child = load_config(tmp_path / "parent.yaml").to_dict(), load_config(tmp_path / "child.yaml").to_dict()
    assert child["run"]["max_steps"] == 7 and parent["run"]["max_steps"] != 7
    assert child["objective"]["guidance_range"] == [1.0, 3.0]
    # everything the child does not name is the parent's, nested keys included
    for section in ("model", "data", "optimizers", "student"):
        assert child[section] == parent[section]
    assert {k: v for k, v in child["run"].items() if k != "max_steps"} == \
        {k: v for k, v in parent["run"].items() if k != "max_steps"}
    assert child["objective"]["name"] == parent["objective"]["name"]
    assert load_config(tmp_path / "child.yaml", ["run.max_steps=9"]).run.max_steps == 9  # overrides still on top


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "base recipes form a cycle"),
    ({"a.yaml": "base: a.yaml\n"}, "base recipes form a cycle"),
    ({"a.yaml": "base: missing.yaml\n"}, "no config file at"),
    ({"a.yaml": "base: [b.yaml]\n"}, "base must be a recipe path"),
])
def test_bad_base_is_one_clear_error(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "a.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_chained_recipes_resolve_to_their_parent_plus_their_own_keys():
    long, longer = (load_config(ROOT / "configs" / f"dmd_{n}_animal_mnist.yaml").to_dict() for n in ("long", "longer"))
    assert longer["student"]["init"] == long["run"]["output_dir"]
    assert longer["run"]["max_steps"] == 1500 and long["run"]["max_steps"] == 3000
    assert longer["objective"] == long["objective"] and longer["optimizers"] == long["optimizers"]
