"""benchmarks/bundled_task.py's merge: a run's methods replace their rows (in place) and Inception values, everything
else on disk (other methods, the teacher, rows another run wrote meanwhile) is kept; new methods come last; methods
whose recipe is gone are dropped. Every warm-restart recipe starts from exactly one other recipe's run."""

import runpy
import sys
import types
from pathlib import Path

import pytest

from fewstep.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def results(rows, training, inception=None, num=2048):
    out = {"num_eval": 1000, "rows": [{"model": m, "steps": s, "fd": fd} for m, s, fd in rows], "training": training}
    if inception is not None:
        out["inception_fid_vs_train"] = {"num_samples": num, "values": inception}
    return out


def test_merge_replaces_only_the_run_methods():
    merged = runpy.run_path(str(ROOT / "benchmarks" / "bundled_task.py"), run_name="bundled_task")["merged"]
    on_disk = results([("cd", 1, 6.8), ("sid", 1, 4.0), ("teacher (Euler, CFG 1.5)", 32, 0.99)],
                      {"cd": {"train_steps": 600}, "sid": {"train_steps": 300}},
                      {"teacher_32step": 76.0, "cd_4step": 90.0, "sid_2step": 100.0})
    # a parallel run added `add` after this run started: still there after the merge
    on_disk["rows"].insert(1, {"model": "add", "steps": 1, "fd": 6.1})
    on_disk["training"]["add"] = {"train_steps": 300}
    new = results([("cd", 1, 5.5), ("cd", 2, 4.4)], {"cd": {"train_steps": 700}})
    shipped = {"cd", "add", "sid", "vsd"}
    out = merged(on_disk, new, ["cd"], shipped)
    assert [(r["model"], r["steps"], r["fd"]) for r in out["rows"]] == [  # cd's rows stay where they were
        ("cd", 1, 5.5), ("cd", 2, 4.4), ("add", 1, 6.1), ("sid", 1, 4.0), ("teacher (Euler, CFG 1.5)", 32, 0.99)]
    first_time = merged(on_disk, results([("vsd", 1, 7.0)], {"vsd": {"train_steps": 300}}), ["vsd"], shipped)
    assert [r["model"] for r in first_time["rows"]] == ["cd", "add", "sid", "vsd", "teacher (Euler, CFG 1.5)"]
    assert out["training"] == {"add": {"train_steps": 300}, "sid": {"train_steps": 300}, "cd": {"train_steps": 700}}
    # cd was retrained without Inception: its stale value goes, the others stay
    assert out["inception_fid_vs_train"] == {"num_samples": 2048,
                                             "values": {"teacher_32step": 76.0, "sid_2step": 100.0}}

    with_inception = results([("cd", 4, 2.0)], {"cd": {"train_steps": 700}},
                             {"real_train_images": 3.0, "teacher_32step": 75.0, "cd_4step": 80.0})
    values = merged(on_disk, with_inception, ["cd"], shipped)["inception_fid_vs_train"]["values"]
    assert values == {"teacher_32step": 75.0, "sid_2step": 100.0, "real_train_images": 3.0, "cd_4step": 80.0}

    # sid's recipe was removed: its rows, training time and Inception value go with the next merge
    out = merged(on_disk, new, ["cd"], shipped - {"sid"})
    assert [r["model"] for r in out["rows"]] == ["cd", "cd", "add", "teacher (Euler, CFG 1.5)"]
    assert "sid" not in out["training"] and out["inception_fid_vs_train"]["values"] == {"teacher_32step": 76.0}


def test_supersede_keeps_the_rows_marked_and_a_re_evaluation_clears_the_mark():
    namespace = runpy.run_path(str(ROOT / "benchmarks" / "bundled_task.py"), run_name="bundled_task")
    superseded, merged = namespace["superseded"], namespace["merged"]
    on_disk = results([("add", 1, 4.1), ("ladd", 1, 4.0), ("sid", 1, 1.0)], {})
    out = superseded(on_disk, ["add", "ladd"], "discriminator fixed")
    assert out["rows"] == on_disk["rows"] and out["superseded"] == {"add": "discriminator fixed",
                                                                    "ladd": "discriminator fixed"}
    again = merged(out, results([("add", 1, 3.0)], {}), ["add"], {"add", "ladd", "sid"})
    assert again["superseded"] == {"ladd": "discriminator fixed"}  # add was retrained and re-evaluated
    with pytest.raises(SystemExit, match="no rows for"):
        superseded(on_disk, ["vsd"], "why")


def test_withdraw_drops_only_the_named_rows_and_a_re_evaluation_clears_it():
    namespace = runpy.run_path(str(ROOT / "benchmarks" / "bundled_task.py"), run_name="bundled_task")
    withdrawn, merged = namespace["withdrawn"], namespace["merged"]
    on_disk = results([("cd", 1, 6.8), ("cd", 2, 6.7), ("cd", 4, 2.1), ("sid", 2, 4.0),
                       ("teacher (Euler, CFG 1.5)", 4, 2.0)],
                      {"cd": {"train_steps": 600}, "sid": {"train_steps": 300}},
                      {"real_train_images": 3.0, "teacher_32step": 76.0, "cd_4step": 90.0, "sid_2step": 100.0})
    out = withdrawn(on_disk, ["cd"], {2, 4}, "sampler fixed")
    assert [(r["model"], r["steps"]) for r in out["rows"]] == [("cd", 1), ("sid", 2), ("teacher (Euler, CFG 1.5)", 4)]
    assert out["inception_fid_vs_train"]["values"] == {"real_train_images": 3.0, "teacher_32step": 76.0,
                                                       "sid_2step": 100.0}
    assert out["withdrawn"] == {"cd": {"steps": [2, 4], "why": "sampler fixed"}}
    assert on_disk["rows"][1] == {"model": "cd", "steps": 2, "fd": 6.7}  # the input is not edited
    with pytest.raises(SystemExit, match="vsd"):
        withdrawn(on_disk, ["vsd"], {2}, "x")
    shipped = {"cd", "sid"}
    assert merged(out, results([("sid", 2, 3.0)], {"sid": {"train_steps": 300}}), ["sid"], shipped)["withdrawn"] == {
        "cd": {"steps": [2, 4], "why": "sampler fixed"}}  # kept through other methods' merges
    assert "withdrawn" not in merged(out, results([("cd", 2, 3.0)], {"cd": {"train_steps": 600}}), ["cd"], shipped)


def test_from_runs_refuses_a_run_still_training(tmp_path):
    finished_checkpoint = runpy.run_path(str(ROOT / "benchmarks" / "bundled_task.py"),
                                         run_name="bundled_task")["finished_checkpoint"]
    checkpoint = tmp_path / "runs" / "cd_long" / "checkpoints" / "step-00001500"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"step": 1500}')
    with pytest.raises(SystemExit, match="1500 of its 2000 steps.*wait for it to finish"):
        finished_checkpoint(checkpoint, 2000)
    assert finished_checkpoint(checkpoint, 1500) == checkpoint


def test_a_recipe_on_a_teacher_not_made_yet_makes_it_first_or_names_its_recipe(tmp_path, monkeypatch):
    distil = runpy.run_path(str(ROOT / "benchmarks" / "bundled_task.py"), run_name="bundled_task")["distil"]
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    for name in ("scm_dense_long", "scm_long", "scm"):  # the recipe and its bases
        recipe = f"{name}_animal_mnist.yaml"
        (repo / "configs" / recipe).write_text((ROOT / "configs" / recipe).read_text())
    monkeypatch.setitem(distil.__globals__, "REPO", repo)
    made = []

    def fake_retime(argv):  # stands in for scripts/retime_teacher.py's main (half an hour of CPU)
        made.append(argv)
        raise RuntimeError("made")

    monkeypatch.setitem(sys.modules, "retime_teacher", types.SimpleNamespace(main=fake_retime))
    with pytest.raises(RuntimeError, match="made"):
        distil("scm_dense_long", 1, tmp_path / "bench")
    assert made == [["--out", str(repo / "runs" / "teacher_dense_time")]]
    (repo / "configs" / "scm_other_animal_mnist.yaml").write_text(
        "base: scm_long_animal_mnist.yaml\nmodel: {pretrained: runs/some_teacher}\n")
    with pytest.raises(SystemExit, match="runs/some_teacher, which is not there yet: scm_other_animal_mnist.yaml"):
        distil("scm_other", 1, tmp_path / "bench")


def test_saved_run_prefers_the_benchmark_run_then_the_recipe_output_dir(tmp_path, monkeypatch):
    namespace = runpy.run_path(str(ROOT / "benchmarks" / "bundled_task.py"), run_name="bundled_task")
    saved_run = namespace["saved_run"]
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    (repo / "configs" / "sid_animal_mnist.yaml").write_text(
        (ROOT / "configs" / "sid_animal_mnist.yaml").read_text())  # run.output_dir: runs/sid_animal_mnist
    monkeypatch.setitem(saved_run.__globals__, "REPO", repo)
    out_root = tmp_path / "bench"
    with pytest.raises(SystemExit) as err:  # neither exists: the message names both places and the fix
        saved_run("sid", out_root)
    assert str(out_root / "sid") in str(err.value) and "runs/sid_animal_mnist" in str(err.value)
    assert "--merge" in str(err.value)
    recipe_run = repo / "runs" / "sid_animal_mnist"
    recipe_run.mkdir(parents=True)
    (recipe_run / "config.yaml").write_text("{}")
    assert saved_run("sid", out_root) == recipe_run  # `fewstep distill --config` wrote it there
    (out_root / "sid").mkdir(parents=True)
    (out_root / "sid" / "config.yaml").write_text("{}")
    assert saved_run("sid", out_root) == out_root / "sid"  # this script's own run wins


def test_run_label_drops_the_bundled_task_suffix():
    run_label = runpy.run_path(str(ROOT / "benchmarks" / "common.py"))["run_label"]
    assert run_label("runs/sid_long_animal_mnist") == "sid_long"
    assert run_label(Path("runs/bundled_task/sid_long")) == "sid_long"


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*_animal_mnist.yaml")
                                          if "init:" in p.read_text()))
def test_warm_restart_recipes_start_from_another_recipes_run(recipe):
    """source_run trains a continued recipe from the run this benchmark made for the recipe whose run.output_dir is
    student.init; exactly one recipe has it, and the continued recipe's comment names it."""
    recipes_writing = runpy.run_path(str(ROOT / "benchmarks" / "bundled_task.py"), run_name="bundled_task")[
        "recipes_writing"]
    init = load_config(ROOT / "configs" / recipe).student.init
    sources = recipes_writing(init)
    assert len(sources) == 1, f"{recipe}: student.init {init} is the run.output_dir of {sources}"
    assert sources[0] in (ROOT / "configs" / recipe).read_text()


def test_every_bundled_recipe_has_an_objective_name_and_the_teacher_none():
    module = runpy.run_path(str(ROOT / "benchmarks" / "bundled_task.py"), run_name="bundled_task")
    names = module["recipe_objectives"](["cd", "sid_batch64", "teacher (Euler, CFG 1.5)"])
    assert names == {"cd": "cd", "sid_batch64": "sid"}
