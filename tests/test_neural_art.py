"""The neural-art task, its meta-training, and the shipped neural-art optimizer."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from artopt.learned_optimizers import LearnedOptimizer, LSTMOptimizerNet, load_learned, save_learned
from artopt.learned_optimizers.shipped import NEURAL_ART, card, weights_path
from artopt.outer_trainers import run_episode
from artopt.tasks.neural_art import HELD_OUT_STYLES, TRAIN_STYLE, NeuralArtTask, clamp_image, split_photos

pytestmark = pytest.mark.usefixtures("shared_data")


@pytest.fixture(scope="module")
def task():
    return NeuralArtTask(size=32, steps=6, unroll=3)


def test_split_is_fixed_disjoint_and_complete(task):
    split = task.split
    assert len(split["val"]) == 100 and len(split["test"]) == 100
    sets = [set(split[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert split == split_photos(task.root / "imagenet-sample")  # deterministic


def test_split_photos_refuses_a_folder_that_leaves_no_training_photo(tmp_path):
    """With only val + test photos, meta-training would fail at its first draw, not when the task is made."""
    for i in range(3):
        (tmp_path / f"p{i}.jpg").write_bytes(b"")
    assert len(split_photos(tmp_path, val=1, test=1)["train"]) == 1
    (tmp_path / "p2.jpg").unlink()
    with pytest.raises(ValueError, match="holds 2 photos; need more than 2"):
        split_photos(tmp_path, val=1, test=1)


@pytest.mark.parametrize("kwargs,message", [({"init": "contnet"}, "init must be 'content' or 'noise'"),
                                            ({"size": 0}, "size must be a whole number of pixels"),
                                            ({"steps": 0}, "steps must be a positive")])
def test_bad_task_settings_are_refused_when_the_task_is_made(kwargs, message):
    # Before: a mistyped init started from noise without a word, size 0 failed inside PIL at the first draw
    with pytest.raises(ValueError, match=message):
        NeuralArtTask(**kwargs)


def test_an_unknown_split_is_named(task):
    with pytest.raises(ValueError, match="split must be one of"):  # (a bare KeyError 'tset' before)
        task.sample(torch.Generator().manual_seed(0), "tset")


def test_photos_are_resized_by_their_short_side_keeping_their_aspect(tmp_path):
    """A crop must be a region of the undistorted photo, not of one squeezed to a square."""
    from PIL import Image

    from artopt.tasks.neural_art import _load_rgb

    Image.new("RGB", (90, 30), (255, 128, 0)).save(tmp_path / "wide.png")
    img = _load_rgb(str(tmp_path / "wide.png"), 20)
    assert img.shape == (3, 20, 60) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0


def test_the_problems_projection_clamps_pixels_to_0_1():
    """Every optimizer's step goes through the problem's projection (clamp_image): pixels stay in [0, 1]."""
    x = torch.tensor([[-0.5, 0.0, 0.25, 1.0, 1.5]])
    assert torch.equal(clamp_image([x])[0], torch.tensor([[0.0, 0.0, 0.25, 1.0, 1.0]]))


def test_loss_weight_settings_reach_the_problems_loss():
    """content/style/tv_weight (e.g. --task-arg style_weight=...) override the engine's defaults."""
    import random

    from artopt.style.engine import StylizeConfig

    task = NeuralArtTask(size=32, content_weight=2.0, style_weight=3.0, tv_weight=0.0)
    _, loss_fn, _ = task._parts(task.split["train"][0], TRAIN_STYLE, 32, random.Random(0))
    assert (loss_fn.content_weight, loss_fn.style_weight, loss_fn.tv_weight) == (2.0, 3.0, 0.0)
    d = StylizeConfig()
    assert NeuralArtTask(size=32)._loss_kwargs() == {
        "content_weight": d.content_weight, "style_weight": d.style_weight, "tv_weight": d.tv_weight}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_samples_crops_of_the_right_size_from_the_given_split(task, split):
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        problem = task.sample(gen, split)
        assert problem.params[0].shape == (1, 3, 32, 32)
        assert problem.info["photo"] in task.split[split]
        assert problem.info["style"] == TRAIN_STYLE
        assert problem.project is clamp_image
        assert 0.0 <= float(problem.params[0].min()) and float(problem.params[0].max()) <= 1.0


def test_size_range_gives_multiples_of_8_and_styles_come_from_the_list():
    t = NeuralArtTask(size_range=(32, 48), styles=("zigzag_colorful.jpg", "starry_night.jpg"))
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        p = t.sample(gen, "train")
        side = p.params[0].shape[-1]
        assert side in (32, 40, 48) and p.params[0].shape[-2] == side
        assert p.info["style"] in t.styles
        assert p.info["style"] not in HELD_OUT_STYLES
    for bounds in ((60, 63), (50, 64), (32, 44), (48, 32)):  # 50-64 drew 48 px crops, 60-63 only 56 px ones
        with pytest.raises(ValueError, match="size_range needs multiples of 8"):
            NeuralArtTask(size_range=bounds)


def test_with_a_size_range_a_crops_gradient_is_scaled_to_the_middle_sizes_pixels():
    # As the engine scales the gradients it hands the LSTM (lstm_input_scale): without it the
    # gradients of a 48 px crop were (64/48)^2 those of a 64 px one and the LSTM saw size as loss scale.
    fixed, ranged = NeuralArtTask(), NeuralArtTask(size_range=(48, 80))
    photo = fixed.split["val"][0]
    for size in (48, 64, 80):
        a = fixed.problem(photo, TRAIN_STYLE, size)
        b = ranged.problem(photo, TRAIN_STYLE, size)
        scale = size * size / 64 ** 2
        assert float(b.loss(b.params, 0)) == pytest.approx(float(a.loss(a.params, 0)) * scale, rel=1e-6)
    assert fixed.size_scale(80) == 1.0
    batch = ranged.sample_batch(torch.Generator().manual_seed(3), "train", 2)  # the batched path too
    unscaled = NeuralArtTask(size_range=(48, 80))
    unscaled.size_scale = lambda size: 1.0
    same = unscaled.sample_batch(torch.Generator().manual_seed(3), "train", 2)
    side = batch.params[0].shape[-1]
    assert float(batch.loss(batch.params, 0)) == pytest.approx(
        float(same.loss(same.params, 0)) * side * side / 64 ** 2, rel=1e-6)


def test_basis_levels_give_multiscale_coefficients_of_the_same_problem():
    pixels = NeuralArtTask(size=32).sample(torch.Generator().manual_seed(4), "val")
    multi = NeuralArtTask(size=32, basis_levels=2).sample(torch.Generator().manual_seed(4), "val")
    assert [tuple(p.shape) for p in multi.params] == [(1, 3, 32, 32), (1, 3, 16, 16)]
    assert multi.info["photo"] == pixels.info["photo"] and multi.info["levels"] == [2]
    assert float(multi.loss(multi.params, 0)) == pytest.approx(float(pixels.loss(pixels.params, 0)), rel=1e-6)
    batch = NeuralArtTask(size=32, basis_levels=2).sample_batch(torch.Generator().manual_seed(4), "train", 2)
    assert [tuple(p.shape) for p in batch.params] == [(2, 3, 32, 32), (2, 3, 16, 16)] and batch.count == 2


class _Crop:
    """Stands in for the task's random.Random: gives back a recorded crop corner (y, then x)."""

    def __init__(self, x, y):
        self._values = iter((y, x))

    def randint(self, lo, hi):
        return next(self._values)


def test_a_batch_of_problems_gives_each_image_its_own_loss_and_gradient(task):
    """sample_batch runs the loss network once for k images; each image's gradient must be exactly
    (up to float rounding) that of its own problem built alone."""
    batch = task.sample_batch(torch.Generator().manual_seed(2), "train", 3)
    assert batch.params[0].shape == (3, 3, 32, 32) and batch.count == 3
    x = batch.fresh_params()
    total = batch.loss(x, 0)
    grad = torch.autograd.grad(total, x)[0]
    singles = 0.0
    for i, info in enumerate(batch.info["stacked"]):
        assert info["photo"] in task.split["train"]
        theta0, loss_fn, _ = task._parts(info["photo"], info["style"], info["size"], _Crop(*info["crop_xy"]))
        torch.testing.assert_close(theta0, batch.params[0][i : i + 1])
        xi = theta0.clone().requires_grad_(True)
        loss = loss_fn(xi)["total"]
        torch.testing.assert_close(torch.autograd.grad(loss, xi)[0], grad[i : i + 1], rtol=1e-4, atol=1e-5)
        singles += float(loss.detach())
    assert float(total.detach()) == pytest.approx(singles, rel=1e-5)


def test_short_meta_training_lowers_the_meta_loss(task):
    """A few meta-steps on one problem lower that problem's trajectory loss (deterministic)."""
    torch.manual_seed(0)
    problem = task.sample(torch.Generator().manual_seed(3), "train")
    nets = nn.ModuleDict({"default": LSTMOptimizerNet(grad_normalization="first_rms")})
    with torch.no_grad():
        before = sum(run_episode(nets, problem, steps=6))
    meta_opt = torch.optim.Adam(nets.parameters(), lr=3e-3)
    for _ in range(8):
        run_episode(nets, problem, steps=6, unroll=3, meta_opt=meta_opt)
    with torch.no_grad():
        after = sum(run_episode(nets, problem, steps=6))
    assert after < before


def test_shipped_weights_load_and_improve_a_small_image():
    path = weights_path(NEURAL_ART)
    assert path.is_file(), f"the trained neural-art optimizer must ship at {path}"
    nets = load_learned(path)
    c = card(NEURAL_ART)
    assert c is not None and c["task"] == "neural-art"
    task = NeuralArtTask(size=64, styles=(HELD_OUT_STYLES[0],))
    problem = task.sample(torch.Generator().manual_seed(0), "test")
    image = problem.fresh_params()[0]
    opt = LearnedOptimizer([image], nets=nets)
    first = None
    for _ in range(8):
        opt.zero_grad()
        loss = problem.loss([image], 0)
        loss.backward()
        first = first if first is not None else float(loss.detach())
        opt.step()
        with torch.no_grad():
            image.clamp_(0, 1)
    with torch.no_grad():
        assert float(problem.loss([image], 0)) < 0.9 * first


@pytest.mark.parametrize("basis", ["pixels", "multiscale"])
def test_engine_never_writes_non_finite_pixels_with_a_broken_optimizer(tmp_path, monkeypatch, basis):
    from artopt.learned_optimizers import shipped
    from artopt.style.engine import StylizeConfig, stylize

    from artopt.learned_optimizers import torch_optimizer

    net = LSTMOptimizerNet()
    broken = save_learned(tmp_path / "broken.safetensors", {"default": net})
    (tmp_path / "broken.json").write_text(json.dumps({"basis": {"kind": basis}}))
    monkeypatch.setattr(shipped, "weights_path", lambda name: broken)
    # Broken after loading (a weights file holding NaN is refused when it loads)
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    monkeypatch.setattr(torch_optimizer, "load_learned", lambda path, device=None: {"default": net})
    notices = []
    content = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    style = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    out = stylize(content, [style], StylizeConfig(size=48, steps=3, optimizer="lstm", device="cpu"),
                  callback=lambda info: notices.append(info.notice))
    assert torch.isfinite(out).all()
    assert any(n and "non-finite" in n for n in notices)


def test_training_script_passes_its_meta_training_options_through(tmp_path):
    """train/neural_art.py: a one-episode run on 16 px crops records the options it was given."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "train" / "neural_art.py"
    spec = importlib.util.spec_from_file_location("neural_art_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()  # the script sets its own; keep the session's
    # one episode on 16 px crops that ships nowhere
    tiny = ["--size", "16", "--steps", "2", "--unroll", "1", "--episodes", "1", "--val-every", "1",
            "--val-problems", "1", "--runs", str(tmp_path), "--ship", ""]
    try:
        rc = script.main(["--name", "tiny", *tiny, "--trajectory-weights", "linear",
                          "--meta-lr-schedule", "cosine", "--val-criterion", "final", "--unroll-schedule", "grow",
                          "--meta-loss", "log", "--meta-fraction", "0.5", "--basis-levels", "4",
                          "--moment-inputs", "--moment-betas", "0.9", "0.99", "--time-inputs", "--level-inputs",
                          "--head-hidden", "8", "--loss-inputs", "--global-cells", "4"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    written = json.loads((tmp_path / "tiny" / "tiny.json").read_text())
    assert written["basis"]["kind"] == "multiscale" and written["basis"]["levels"] == 4
    assert "m/sqrt(v)" in written["architecture"]
    net = load_learned(tmp_path / "tiny" / "tiny.safetensors")["default"]
    assert (net.config.moment_inputs, net.config.beta1, net.config.beta2, net.config.time_inputs) == (True, 0.9, 0.99, True)
    assert "tanh(t/s)" in written["architecture"]
    assert net.config.level_inputs and "basis level" in written["architecture"]
    assert net.config.head_hidden == 8 and "8-unit ReLU layer" in written["architecture"]
    assert net.config.loss_inputs and "loss change" in written["architecture"]
    assert net.config.global_cells == 4 and "global averaging cells" in written["architecture"]
    assert "linear head" not in written["architecture"]
    from artopt.learned_optimizers import shipped
    assert shipped.trained_pixels(tmp_path / "tiny" / "tiny.safetensors") == 16 * 16  # for the engine's input scale
    meta = written["meta_training"]
    assert (meta["trajectory_weights"], meta["meta_lr_schedule"], meta["val_criterion"], meta["unroll_schedule"],
            meta["meta_loss"], meta["meta_fraction"]) == ("linear", "cosine", "final", "grow", "log", 0.5)
    # Each rejected flag rides on the tiny run: should the flag ever become valid, the call finishes
    # in seconds and fails here, instead of meta-training into weights/.
    for bad in (["--trajectory-weights", "cubic"],
                ["--moment-inputs", "--moment-betas", "0.9", "1.5"],
                ["--level-inputs", "--basis-levels", "2"],  # level inputs of levels never trained
                ["--head-hidden", "-1"],
                ["--global-cells", "21"],  # more than the layer's 20 units
                ["--size-range", "96", "48"],
                ["--size-range", "60", "63"],  # no multiple of 8 in it: it drew 56 px crops
                ["--output-scale", "nan"],
                ["--prior-minutes", "-5"],
                ["--unroll", "64"]):  # longer than the run's steps
        with pytest.raises(SystemExit):
            script.main(["--name", "rejected", *tiny, *bad])
    assert not (tmp_path / "rejected").exists()


def _train_script(name: str):
    """A script of train/, imported as a module."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "train" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture
def eval_script(tmp_path, monkeypatch):
    """train/eval_neural_art.py with its learning-rate cache in tmp_path; torch's thread count (the
    script sets its own) is restored afterwards."""
    script = _train_script("eval_neural_art")
    monkeypatch.setattr(script, "OUT", tmp_path)
    threads = torch.get_num_threads()
    yield script
    torch.set_num_threads(threads)


def _cache_rates(folder, rates: dict[str, float]) -> None:
    """Cached tuned rates, by lrs.json key, so an evaluation runs without tuning."""
    (folder / "lrs.json").write_text(json.dumps({key: {"lr": lr} for key, lr in rates.items()}))


def test_selection_script_scores_every_file_on_the_same_fresh_validation_problems(tmp_path, capsys):
    """train/select_neural_art.py: two copies of one file score the same; the lowest mean is named best."""
    script = _train_script("select_neural_art")
    torch.manual_seed(0)
    a = save_learned(tmp_path / "a.safetensors", {"default": LSTMOptimizerNet()})
    b = save_learned(tmp_path / "b.safetensors", {"default": LSTMOptimizerNet(output_scale=0.0)})  # never moves
    a2 = tmp_path / "a2.safetensors"
    a2.write_bytes(a.read_bytes())
    for w in (a, b, a2):  # a card that records no basis: pixels
        w.with_suffix(".json").write_text(json.dumps({"task": "neural-art"}))
    threads = torch.get_num_threads()
    try:
        rc = script.main([str(a), str(b), str(a2), f"{a}@multiscale", "--size", "16", "--steps", "3",
                          "--problems", "1", "--val-seeds", "5", "6", "--json", str(tmp_path / "sel.json")])
        # Every file is checked before any is scored: a bad one is named at once.
        mnist = tmp_path / "m.safetensors"
        mnist.write_bytes(a.read_bytes())
        mnist.with_suffix(".json").write_text(json.dumps({"task": "mnist"}))
        capsys.readouterr()
        bare = tmp_path / "bare.safetensors"  # copied without its card
        bare.write_bytes(a.read_bytes())
        # Before: a file without its card was scored in pixels, whatever it was meta-trained in.
        for bad, message in ((f"{a}@wavelets", "unknown basis"), (str(tmp_path / "gone.safetensors"), "not found"),
                             (str(mnist), "meta-trained on 'mnist', not neural art"),
                             (str(bare), "has no card (bare.json) beside it: copy it along with the weights, or "
                                         "name the basis they were meta-trained in: PATH@multiscale or PATH@pixels")):
            with pytest.raises(SystemExit):
                script.main([str(a), bad, "--size", "16", "--steps", "1", "--problems", "1"])
            out, err = capsys.readouterr()
            assert message in err and out == ""  # refused before anything was scored
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    report = json.loads((tmp_path / "sel.json").read_text())
    scores = report["weights"]
    assert set(scores) == {str(a), str(b), str(a2), f"{a}@multiscale"}
    assert set(scores[str(a)]["per_seed"]) == {"5", "6"}
    assert scores[str(a)] == scores[str(a2)]
    assert scores[str(a)]["basis"] == "pixels" and scores[f"{a}@multiscale"]["basis"] == "multiscale"
    assert scores[f"{a}@multiscale"]["mean"] != scores[str(a)]["mean"]  # 16 px crops: 2 levels
    assert scores[f"{a}@multiscale"]["coarsest"] == 8  # no levels on the card: multiscale.COARSEST
    assert all(list(s["mean_loss_at_step"]) == ["1"] for s in scores.values())  # 3 steps: 3 // 2
    assert scores[str(a)]["mean_loss_at_step"]["1"] != scores[str(b)]["mean_loss_at_step"]["1"]
    assert all(math.isfinite(s["mean"]) for s in scores.values())
    assert report["best"] == min(scores, key=lambda k: scores[k]["mean"])
    assert scores[str(a)]["mean"] != scores[str(b)]["mean"]


@pytest.mark.parametrize("args, message", [
    (["--tie-within", "nan"], "--tie-within must be a finite number >= 0"),  # was a ValueError traceback
    (["--json", "{blocker}/sel.json"], "is a file, not a folder"),  # was a FileExistsError after the scoring
    # the shipped file's card records seed 16: its own validation problems favour it
    (["--val-seeds", "3", "16"], "was meta-trained with seed 16 (its card), so --val-seeds 16 are its own"),
])
def test_selection_flags_are_checked_before_any_scoring(tmp_path, capsys, args, message):
    script = _train_script("select_neural_art")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as done:
        script.main([str(weights_path(NEURAL_ART)), "--problems", "1", "--steps", "2",
                     *[a.format(blocker=tmp_path / "a_file") for a in args]])
    out, err = capsys.readouterr()
    assert done.value.code == 2 and message in err and out == "", err


def test_selection_breaks_a_tie_on_the_final_loss_by_the_earlier_loss():
    """select_neural_art.choose: files within --tie-within of the lowest mean are tied, and the tie
    goes to the lowest loss at the tie-break step; without a tie the lowest mean wins."""
    script = _train_script("select_neural_art")
    scores = {"a": {"mean": 0.4750, "mean_loss_at_step": {"32": 0.610}},
              "b": {"mean": 0.4760, "mean_loss_at_step": {"32": 0.600}},  # 0.21% above a
              "c": {"mean": 0.4800, "mean_loss_at_step": {"32": 0.590}}}  # 1.05% above a
    assert script.choose(scores, 0.0, "32") == ("a", ["a"])
    assert script.choose(scores, 0.005, "32") == ("b", ["a", "b"])
    assert script.choose(scores, 0.02, "32") == ("c", ["a", "b", "c"])
    for bad in (["--tie-within", "-0.1"], ["--tie-break-step", "0"], ["--steps", "8", "--tie-break-step", "9"]):
        with pytest.raises(SystemExit):
            script.main(["w.safetensors", *bad])


def test_trained_coarsest_follows_the_cards_levels_and_crop(tmp_path):
    """The basis's coarsest level at meta-training time, which selection, the evaluation's "-raw"
    runs and (until calibrated) the engine use: the crop's side halved levels - 1 times."""
    from artopt.learned_optimizers import shipped

    w = tmp_path / "w.safetensors"
    assert shipped.trained_coarsest(w) == 8  # no card
    for made, expected in [({"basis": {"kind": "pixels"}, "trained_pixels": 4096}, 8),
                           ({"basis": {"kind": "multiscale", "levels": 4}}, 8),  # crop unknown
                           ({"basis": {"kind": "multiscale", "levels": 4}, "trained_pixels": 4096}, 8),
                           ({"basis": {"kind": "multiscale", "levels": 5}, "trained_pixels": 4096}, 4),
                           ({"basis": {"kind": "multiscale", "levels": 3}, "trained_pixels": 128 * 128}, 32),
                           ({"basis": {"kind": "multiscale", "levels": 9}, "trained_pixels": 4096}, 1)]:
        w.with_suffix(".json").write_text(json.dumps(made))
        assert shipped.trained_coarsest(w) == expected, made
    w.with_suffix(".json").write_text(json.dumps({"basis": {"kind": "multiscale", "levels": 5},
                                                  "trained_pixels": 4096}))
    assert shipped.inference_settings(w) == {"lr": 1.0, "coarsest": 4}


def test_calibration_script_records_the_best_grid_point_in_the_card(tmp_path):
    """train/calibrate_neural_art.py scores each (coarsest, lr) pair on validation problems; --card
    writes the lowest into the card, and the shipped-weights reader returns it."""
    from artopt.learned_optimizers import shipped

    script = _train_script("calibrate_neural_art")
    torch.manual_seed(0)
    w = save_learned(tmp_path / "w.safetensors", {"default": LSTMOptimizerNet()})
    w.with_suffix(".json").write_text(json.dumps({"basis": {"kind": "multiscale", "levels": 2}}))
    assert shipped.inference_settings(w) == {"lr": 1.0, "coarsest": 8}  # as trained until calibrated
    threads = torch.get_num_threads()
    try:
        rc = script.main([str(w), "--size", "16", "--steps", "3", "--problems", "1", "--val-seeds", "5",
                          "--lr", "1", "1e-9", "--coarsest", "8", "2", "--json", str(tmp_path / "cal.json"), "--card"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    report = json.loads((tmp_path / "cal.json").read_text())
    assert [(r["coarsest"], r["lr"]) for r in report["grid"]] == [(8, 1.0), (8, 1e-9), (2, 1.0), (2, 1e-9)]
    scores = {(r["coarsest"], r["lr"]): r["score"] for r in report["grid"]}
    assert scores[(8, 1e-9)] == pytest.approx(scores[(2, 1e-9)], rel=1e-6)  # a still optimizer: no basis matters
    assert scores[(8, 1.0)] != scores[(2, 1.0)]  # 16 px: 2 levels down to 8 px, 4 down to 2 px
    best = min(scores, key=scores.get)
    assert report["as_trained"]["score"] == scores[(8, 1.0)]
    card = json.loads(w.with_suffix(".json").read_text())
    assert card["basis"]["kind"] == "multiscale"  # the rest of the card is kept
    assert (card["inference"]["coarsest"], card["inference"]["lr"]) == best
    assert shipped.inference_settings(w) == {"lr": best[1], "coarsest": best[0]}
    w.with_suffix(".json").write_text(json.dumps({"inference": {"lr": -1}}))
    with pytest.raises(ValueError, match="inference settings"):
        shipped.inference_settings(w)


def test_calibration_script_refuses_what_it_could_not_finish_before_any_scoring(tmp_path, capsys):
    script = _train_script("calibrate_neural_art")
    w = save_learned(tmp_path / "w.safetensors", {"default": LSTMOptimizerNet()})
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for args, message in (
            # Before: a FileExistsError traceback after the whole grid was scored.
            (["--json", str(blocker / "cal.json")], "is a file, not a folder"),
            # Before: scored in pixels, whatever the weights were meta-trained in (and --card made a card
            # that holds nothing else).
            ([], "has no card (w.json) beside it"),
            # Before: run, with every update infinite.
            (["--lr", "inf"], "--lr values must be positive and finite")):
        with pytest.raises(SystemExit) as done:
            script.main([str(w), "--size", "16", "--steps", "3", "--problems", "1", *args])
        out, err = capsys.readouterr()
        assert done.value.code == 2 and message in err and out == "", err
        if not args:  # the cardless case: the remaining checks need a card
            w.with_suffix(".json").write_text(json.dumps({"basis": {"kind": "multiscale", "levels": 2}}))
    assert not w.with_suffix(".json").read_text().count("inference")


def test_engine_evaluation_runs_flat_entries_without_the_pyramid(tmp_path, eval_script):
    """eval_neural_art's engine settings: NAME-flat runs NAME at full size only, in the same run as the
    coarse-to-fine entries, with the baseline's learning rate tuned for single-scale runs, and is timed
    against that run's Adam."""
    script = eval_script
    _cache_rates(tmp_path, {"engine-256px/steps=4/adam": 0.02, "engine-256px-pyramid-off/steps=4/adam": 0.03})
    assert script.main(["256", "--pyramid", "on", "--optimizers", "adam,adam-flat,lstm-flat", "--photos", "1",
                        "--steps", "4", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "256-pyramid-on.json").read_text())
    runs = report["optimizers"]
    assert (runs["adam"]["lr"], runs["adam-flat"]["lr"]) == (0.02, 0.03)
    assert len(runs["adam-flat"]["mean_curve"]) == len(runs["lstm-flat"]["mean_curve"]) == 4  # every step at 256 px
    assert len(runs["adam"]["mean_curve"]) < 4  # the first steps went to the 128 px scale
    assert runs["adam"]["final_losses"] == [runs["adam"]["mean_final_loss"]]  # per photo (one here)
    assert runs["lstm-flat"]["learned"] and report["best_baseline"] in ("adam", "adam-flat")
    assert set(report["timing"]) == {"adam", "adam-flat", "lstm-flat"}
    assert set(report["speed"]) == {"adam-flat", "lstm-flat"} and report["speed"]["lstm-flat"]["photos"] == 1
    assert report["timing_conditions"]["threads"] == 1


def _record_engine_runs(script, tmp_path, monkeypatch) -> list:
    """A list that gets (optimizer, lr, pyramid, coarse share, adam levels) for each engine run the evaluation
    script makes at 256 px (Adam's rate cached), each run faked as a 2-step curve."""
    _cache_rates(tmp_path, {"engine-256px/steps=4/adam": 0.02})
    seen = []

    def fake_run(task, photo, style, size, pyramid, name, lr, steps, coarse_share=None, adam_levels=0, **kw):
        seen.append((name, lr, pyramid, coarse_share, adam_levels))
        return {"curve": [2.0, 1.0], "final": 1.0, "seconds": 2.0, "loss_seconds": 1.0,
                "times": [(1.0, 0.5), (2.0, 1.0)], "first_final_scale_step": 2}

    monkeypatch.setattr(script, "_engine_run", fake_run)
    return seen


def test_engine_evaluation_runs_coarse_share_entries_with_their_split(tmp_path, monkeypatch, capsys, eval_script):
    """NAME-coarseS runs NAME with the pyramid's coarsest scale given the share S of the steps (a baseline
    at its rate for the setting), beside the engine's split, in the same timed run; -flat still combines."""
    script = eval_script
    seen = _record_engine_runs(script, tmp_path, monkeypatch)
    assert script.main(["256", "--pyramid", "on", "--optimizers", "adam,adam-coarse0.25,lstm-coarse0.1,lstm-coarse0.1-flat",
                        "--photos", "1", "--steps", "4", "--out", str(tmp_path)]) == 0
    assert seen == [("adam", 0.02, True, None, 0), ("adam", 0.02, True, 0.25, 0), ("lstm", None, True, 0.1, 0),
                    ("lstm", None, False, 0.1, 0)]
    report = json.loads((tmp_path / "256-pyramid-on.json").read_text())
    assert report["optimizers"]["lstm-coarse0.1"]["learned"] and set(report["speed"]) == {
        "adam-coarse0.25", "lstm-coarse0.1", "lstm-coarse0.1-flat"}
    for bad in ("lstm-coarse1", "adam-coarse0"):
        with pytest.raises(SystemExit):
            script.main(["256", "--pyramid", "on", "--optimizers", bad, "--out", str(tmp_path)])
        assert "coarse share must be a fraction" in capsys.readouterr().err


def test_engine_evaluation_runs_adam_levels_entries_with_their_split(tmp_path, monkeypatch, capsys, eval_script):
    """lstm-adamlevelsK[-coarseS][-flat] runs the learned optimizer with Adam on the K finest basis levels of the
    finer pyramid scales (the engine's adam_levels); baselines and counts the engine refuses are refused first."""
    script = eval_script
    seen = _record_engine_runs(script, tmp_path, monkeypatch)
    assert script.main(["256", "--pyramid", "on", "--optimizers", "adam,lstm-adamlevels1-coarse0.1,lstm-adamlevels2",
                        "--photos", "1", "--steps", "4", "--out", str(tmp_path)]) == 0
    assert seen == [("adam", 0.02, True, None, 0), ("lstm", None, True, 0.1, 1), ("lstm", None, True, None, 2)]
    report = json.loads((tmp_path / "256-pyramid-on.json").read_text())
    assert report["optimizers"]["lstm-adamlevels1-coarse0.1"]["learned"]
    assert script._engine_variant("lstm-adamlevels3-coarse0.5-flat", True) == ("lstm", False, 0.5, 3)
    for bad in ("adam-adamlevels1", "lstm-adamlevels0", f"lstm-adamlevels{script.MAX_ADAM_LEVELS + 1}"):
        with pytest.raises(SystemExit):
            script.main(["256", "--pyramid", "on", "--optimizers", bad, "--out", str(tmp_path)])
        assert "-adamlevelsK is for learned optimizers" in capsys.readouterr().err


def test_crop_evaluation_runs_a_baseline_in_the_basis_with_its_own_rate(tmp_path, eval_script, capsys):
    """eval_neural_art 64/128: BASELINE-ms is the baseline on the multi-scale basis's coefficients, tuned
    and cached under its own name; names it cannot run are refused before any work."""
    script = eval_script
    _cache_rates(tmp_path, {"neural-art-64px-starry_night/steps=3/adam": 0.04,
                            "neural-art-64px-starry_night/steps=3/adam-ms": 0.01})
    assert script.main(["64", "--optimizers", "adam,adam-ms", "--photos", "1", "--steps", "3",
                        "--out", str(tmp_path)]) == 0
    for setting, names, message in [("64", "adam,lbfgs-ms", "lbfgs does not run in the multi-scale basis"),
                                    ("64", "adam,adamw", "unknown optimizer 'adamw'"),
                                    ("256", "adam,lbfgs-ms-flat", "lbfgs does not run in the multi-scale")]:
        with pytest.raises(SystemExit):
            script.main([setting, "--optimizers", names, "--out", str(tmp_path)])
        assert message in capsys.readouterr().err
    runs = json.loads((tmp_path / "64.json").read_text())["optimizers"]
    assert (runs["adam"]["lr"], runs["adam-ms"]["lr"]) == (0.04, 0.01)
    assert runs["adam"]["mean_final_loss"] != runs["adam-ms"]["mean_final_loss"]
    assert not runs["adam-ms"]["learned"]


def test_engine_evaluation_runs_a_baseline_in_the_basis(tmp_path, monkeypatch, eval_script):
    """eval_neural_art 256-512: BASELINE-ms goes through the engine with basis multiscale and its own rate."""
    script = eval_script
    _cache_rates(tmp_path, {"engine-256px-pyramid-off/steps=3/adam": 0.02,
                            "engine-256px-pyramid-off/steps=3/adam-ms": 0.01})
    seen = []
    real = script.stylize
    monkeypatch.setattr(script, "stylize", lambda *a, **k: seen.append((a[2].optimizer, a[2].basis, a[2].lr)) or real(*a, **k))
    assert script.main(["256", "--optimizers", "adam,adam-ms", "--photos", "1", "--steps", "3",
                        "--out", str(tmp_path)]) == 0
    assert seen == [("adam", "pixels", 0.02), ("adam", "multiscale", 0.01)]
    runs = json.loads((tmp_path / "256-pyramid-off.json").read_text())["optimizers"]
    assert runs["adam"]["mean_final_loss"] != runs["adam-ms"]["mean_final_loss"]


def test_engine_tuning_widens_the_grid_and_keeps_rates_tuned_meanwhile(tmp_path, monkeypatch, eval_script):
    """A best rate at the grid's edge is followed past it; the rate cache is re-read before each write,
    so an entry another tuning run saved in the meantime survives."""
    script = eval_script
    _cache_rates(tmp_path, {"kept": 1.0})
    best = 4 * script.GRID_REFERENCE_LR["adam"]
    tried = []

    def fake_run(task, photo, style, size, pyramid, name, lr, steps, **kw):
        if not tried:
            script._save_lr_entry("written-meanwhile", {"lr": 2.0})
        tried.append(lr)
        final = 1.0 + math.log(lr / best) ** 2
        return {"curve": [3.0, final], "final": final, "seconds": 1.0, "loss_seconds": 0.5,
                "times": [(0.5, 0.25), (1.0, 0.5)], "first_final_scale_step": 0}

    monkeypatch.setattr(script, "_engine_run", fake_run)
    rc = script.main(["256", "--pyramid", "on", "--optimizers", "adam", "--photos", "1", "--tune-photos", "1",
                      "--steps", "4", "--retune", "--out", str(tmp_path / "out")])
    assert rc == 0
    cache = json.loads((tmp_path / "lrs.json").read_text())
    entry = cache["engine-256px/steps=4/adam"]
    assert entry["lr"] == pytest.approx(best) and not entry["at_edge"]
    assert len(entry["scores"]) == 5  # x0.5, x1, x2, then x4 (best) and x8 past the edge
    assert cache["kept"] == {"lr": 1.0} and cache["written-meanwhile"] == {"lr": 2.0}
    assert list(cache) == sorted(cache)
    assert not [p for p in tmp_path.iterdir() if p.name not in ("lrs.json", "out")]  # no lock or temp file left
    assert len(tried) == 6  # 5 tuning runs on 1 photo, then the test photo
    with pytest.raises(SystemExit):
        script.main(["256", "--widen", "-1", "--out", str(tmp_path / "out")])
    assert len(tried) == 6


def test_engine_evaluation_adds_optimizers_to_an_existing_setting(tmp_path, monkeypatch, capsys, eval_script):
    """--add runs only the named optimizers on the setting's photos and ranks them with those already
    in its JSON, which keep their curves and timings."""
    script = eval_script
    _cache_rates(tmp_path, {f"engine-256px/steps=4/{o}": 0.1 for o in ("adam", "sgd")})
    finals = {"lstm": 0.5, "adam": 1.0, "sgd": 0.8, "lbfgs": 1.2}

    def fake_run(task, photo, style, size, pyramid, name, lr, steps, **kw):
        curve = [3.0, 2.0, finals[name]][-steps:]  # L-BFGS records fewer points than the others
        if name == "lbfgs":
            curve = curve[1:]
        return {"curve": curve, "final": finals[name], "seconds": 2.0, "loss_seconds": 1.0,
                "times": [(1.0, 0.5)] * len(curve), "first_final_scale_step": 0}

    monkeypatch.setattr(script, "_engine_run", fake_run)
    out = tmp_path / "out"
    common = ["256", "--pyramid", "on", "--photos", "2", "--steps", "4", "--out", str(out)]
    assert script.main([*common, "--optimizers", "lstm,adam,lbfgs"]) == 0
    first = json.loads((out / "256-pyramid-on.json").read_text())
    assert first["best_baseline"] == "adam" and first["lstm_over_best_baseline"] == 0.5 and first["steps"] == 4
    assert script.main([*common, "--optimizers", "sgd", "--add"]) == 0
    merged = json.loads((out / "256-pyramid-on.json").read_text())
    assert set(merged["optimizers"]) == {"lstm", "adam", "lbfgs", "sgd"}
    assert merged["best_baseline"] == "sgd" and merged["lstm_over_best_baseline"] == pytest.approx(0.5 / 0.8)
    assert merged["optimizers"]["adam"] == first["optimizers"]["adam"]
    assert (merged["timing"], merged["speed"]) == (first["timing"], first["speed"])  # timed run untouched
    assert merged["added"][0]["optimizers"] == ["sgd"]
    with pytest.raises(SystemExit):
        script.main([*common, "--optimizers", "sgd", "--add"])
    assert "already has sgd" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="other photos"):
        script.main([*common, "--optimizers", "nag", "--add", "--seed", "1"])
    with pytest.raises(SystemExit):
        script.main(["512", "--optimizers", "adam", "--add", "--out", str(out)])  # nothing to add to
    with pytest.raises(SystemExit):  # refused before any run
        script.main([*common[:-4], "--steps", "2", "--out", str(out), "--optimizers", "nag", "--add"])
    legacy = {**merged, "optimizers": {**merged["optimizers"], "adam": {**merged["optimizers"]["adam"],
                                                                         "mean_curve": [1.0, 1.0]}}}
    legacy.pop("steps")  # written before reports recorded their steps: the curves tell
    with pytest.raises(SystemExit, match="other steps"):
        script._add_to(legacy, {"optimizers": {"nag": merged["optimizers"]["sgd"]}}, out / "x.json")
    assert json.loads((out / "256-pyramid-on.json").read_text()) == merged


def test_engine_evaluation_replaces_an_optimizers_runs(tmp_path, monkeypatch, capsys, eval_script):
    """--replace reruns optimizers already in a setting's JSON on its photos: their new curves take the
    old ones' place and are ranked again, the other runs and their timings stay, and the old runs'
    finals, timing and speed are kept under "replaced"."""
    script = eval_script
    _cache_rates(tmp_path, {"engine-256px/steps=3/adam": 0.1})
    finals = {"lstm": 0.5, "adam": 1.0}

    def fake_run(task, photo, style, size, pyramid, name, lr, steps, **kw):
        curve = [3.0, 2.0, finals[name]]
        return {"curve": curve, "final": finals[name], "seconds": 2.0, "loss_seconds": 1.0,
                "times": [(1.0 + k, 0.5) for k in range(3)], "first_final_scale_step": 0}

    monkeypatch.setattr(script, "_engine_run", fake_run)
    out = tmp_path / "out"
    common = ["256", "--pyramid", "on", "--photos", "2", "--steps", "3", "--out", str(out)]
    assert script.main([*common, "--optimizers", "lstm,adam"]) == 0
    first = json.loads((out / "256-pyramid-on.json").read_text())
    assert first["speed"]["lstm"]["mean_seconds_to_adam_final"] == 3.0  # the lstm reaches 1.0 at its last step
    finals["lstm"] = 1.2  # the rerun ends higher, above Adam
    assert script.main([*common, "--optimizers", "lstm", "--replace"]) == 0
    replaced = json.loads((out / "256-pyramid-on.json").read_text())
    assert replaced["optimizers"]["lstm"]["mean_final_loss"] == 1.2 and list(replaced["optimizers"]) == ["lstm", "adam"]
    assert replaced["lstm_over_best_baseline"] == pytest.approx(1.2) and replaced["steps_to_reach_best_baseline_final"] == {"lstm": None}
    assert replaced["optimizers"]["adam"] == first["optimizers"]["adam"]
    assert replaced["timing"] == {"adam": first["timing"]["adam"]} and replaced["speed"] == {}
    old = replaced["replaced"][0]
    assert old["optimizers"] == ["lstm"] and old["mean_final_loss"] == {"lstm": 0.5}
    assert old["lstm_over_best_baseline"] == 0.5 and old["speed"] == first["speed"]
    assert script.first_lstm_final(replaced) == 0.5 and script.first_lstm_final(first) == 0.5
    assert old["timing"] == {"lstm": first["timing"]["lstm"]}
    assert replaced["added"][0]["optimizers"] == ["lstm"] and replaced["added"][0]["replacing"] is True
    assert replaced["added"][0]["timing"] == {}  # no Adam in the rerun to time it against
    for flags, said in ((["--optimizers", "sgd", "--replace"], "has no sgd to replace"),
                        (["--optimizers", "lstm", "--replace", "--add"], "give one")):
        with pytest.raises(SystemExit):  # refused before any run
            script.main([*common, *flags])
        assert said in capsys.readouterr().err
    assert json.loads((out / "256-pyramid-on.json").read_text()) == replaced


def test_speed_summary_compares_mean_times_to_adams_final_loss():
    script = _train_script("eval_neural_art")

    def row(seconds, share):
        return {"seconds_to_adam_final": seconds, "total_seconds": 99.0, "loss_net_seconds_to_adam_final": None,
                "loss_net_share": share}

    speed = script._speed_summary({"adam": [row(30.0, 0.98), row(50.0, 0.98)],
                                   "lstm": [row(10.0, 0.3), row(30.0, 0.4)],
                                   "lbfgs": [row(None, 0.9), row(45.0, 0.9)]})
    assert speed["lstm"]["mean_seconds_to_adam_final"] == 20.0 and speed["lstm"]["adam_over_this"] == 2.0
    assert abs(speed["lstm"]["update_share"] - 0.65) < 1e-12
    # a photo that never reached Adam's loss leaves no mean: it would flatter the optimizer
    assert speed["lbfgs"]["photos_reaching_adam_final"] == 1 and speed["lbfgs"]["adam_over_this"] is None
    assert script._speed_summary({"lstm": [row(1.0, 0.5)]}) == {}


def test_evaluation_summary_reads_and_writes_the_out_folder(tmp_path, monkeypatch, capsys):
    script = _train_script("eval_neural_art")
    shared = tmp_path / "shared"
    monkeypatch.setattr(script, "OUT", shared)  # must stay untouched
    out = tmp_path / "mine"
    out.mkdir()
    (out / "64.json").write_text(json.dumps({
        "setting": "64", "style": "starry_night.jpg", "best_baseline": "adam", "best_baseline_final_loss": 0.6,
        "optimizers": {"lstm": {"mean_final_loss": 0.48}}, "lstm_over_best_baseline": 0.8,
        "steps_to_reach_best_baseline_final": {"lstm": 38}}))
    assert script.main(["summary", "--out", str(out)]) == 0
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["setting"], r["lstm_final"]) for r in rows] == [("64", 0.48)]
    assert not shared.exists()
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "mine"}))
    assert script.main(["summary", "--out", str(out), "--card", str(card)]) == 0
    recorded = json.loads(card.read_text())["evaluation"]
    # where the table came from and how (it said train/results/neural_art, and left --out out)
    assert recorded["source"] == f"{out.as_posix()}/*.json"
    assert recorded["command"] == f"python train/eval_neural_art.py summary --out {out} --card {card}"


def test_engine_evaluation_on_validation_photos_needs_its_own_out_folder(tmp_path, monkeypatch):
    """--split val (for choosing between weights) runs on validation photos and records so; it is
    refused without --out, which would overwrite the test results."""
    script = _train_script("eval_neural_art")
    monkeypatch.setattr(script, "OUT", tmp_path)
    (tmp_path / "lrs.json").write_text(json.dumps({"engine-256px-pyramid-off/steps=4/adam": {"lr": 0.02}}))

    def fake_run(task, photo, style, size, pyramid, name, lr, steps, **kw):
        return {"curve": [3.0, 1.0], "final": 1.0, "seconds": 1.0, "loss_seconds": 0.5,
                "times": [(0.5, 0.25), (1.0, 0.5)], "first_final_scale_step": 0}

    monkeypatch.setattr(script, "_engine_run", fake_run)
    with pytest.raises(SystemExit):
        script.main(["256", "--split", "val", "--optimizers", "adam", "--photos", "2", "--steps", "4"])
    out = tmp_path / "val"
    for split in ("val", "test"):
        assert script.main(["256", "--split", split, "--optimizers", "adam", "--photos", "2", "--steps", "4",
                            "--out", str(out / split)]) == 0
    split = script.NeuralArtTask(size=64).split
    reports = {s: json.loads((out / s / "256-pyramid-off.json").read_text()) for s in ("val", "test")}
    for s, report in reports.items():
        assert report["split"] == s and len(report["photos"]) == 2 and set(report["photos"]) <= set(split[s])


@pytest.mark.parametrize("args, message", [
    (["64", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["64", "--steps", "0"], "--steps must be at least 1, got 0"),  # it used to run the default 128 steps
    (["256", "--photos", "200"], "at most 100"),
    (["256", "--tune-photos", "0"], "--tune-photos must be at least 1, got 0"),
    (["64", "--out", __file__], "is a file; give a folder"),  # it failed with 'File exists' after the run
    # Before: a KeyError traceback, once the baselines were tuned.
    (["64", "--optimizers", "lstm-prev"], "--optimizers lstm-prev runs the weights named lstm-prev: give them "
                                          "with --weights lstm-prev=PATH"),
    (["256", "--optimizers", "lstm-prev-raw-flat"], "give them with --weights lstm-prev=PATH"),
    # Before: they were never run, and nothing said so.
    (["64", "--weights", "lstm-other=weights/neural_art.safetensors"],
     "--weights lstm-other: no optimizer in --optimizers runs it"),
    # Before: found missing only after the baselines were tuned.
    (["64", "--weights", "lstm=/no/such.safetensors"], "--weights lstm=/no/such.safetensors: no such file"),
    (["128", "--weights", "/no/such.safetensors"], "--weights lstm=/no/such.safetensors: no such file"),
    (["64", "--weights", __file__], "test_neural_art.py has no card"),
    # Before: a rate of -lr was tried when tuning, and ignored while a rate is cached.
    (["64", "--grid-factors", "1", "-1"], "--grid-factors must be positive and finite, got -1"),
    (["256", "--engine-grid-factors", "0"], "--engine-grid-factors must be positive and finite, got 0"),
])
def test_evaluation_counts_are_checked_before_anything_runs(eval_script, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        eval_script.main(["--optimizers", "lstm", "--out", str(tmp_path / "out"), *args])  # a later --out wins
    out, err = capsys.readouterr()
    assert message in err and out == "" and not (tmp_path / "out").exists()


def test_the_suite_evaluation_refuses_an_output_it_cannot_write_before_running(tmp_path, capsys):
    script = _train_script("evaluate")
    (tmp_path / "file").write_text("x")
    threads = torch.get_num_threads()
    try:
        for flag, path, message in (("--json", tmp_path, "is a folder"),
                                    ("--plot", tmp_path / "file" / "p.png", "cannot make its folder")):
            with pytest.raises(SystemExit):
                script.main(["quadratic", flag, str(path)])
            out, err = capsys.readouterr()
            assert message in err and out == ""
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("text, said", [
    ('{"neural-art-64px', "not a readable JSON file of tuned rates"),  # was a JSONDecodeError traceback
    ('{"k": {"lr": "fast"}}', "the entry 'k' holds no tuned rate"),  # was "Unknown format code 'g'"
    ('[1, 2]', "the entry '(the whole file)' holds no tuned rate"),
])
def test_a_damaged_rate_cache_or_result_is_one_line_naming_the_file(tmp_path, eval_script, capsys, text, said):
    (tmp_path / "lrs.json").write_text(text)
    with pytest.raises(SystemExit) as done:
        eval_script.main(["64", "--optimizers", "lstm,adam", "--photos", "1", "--steps", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    assert f"error: {tmp_path / 'lrs.json'}: {said}" in err


def test_a_damaged_result_for_add_or_summary_is_one_line_naming_the_file(tmp_path, eval_script, capsys):
    (tmp_path / "256-pyramid-on.json").write_text('{"setting": "256"')
    for argv in (["256", "--pyramid", "on", "--add", "--optimizers", "adam", "--out", str(tmp_path)],
                 ["summary", "--out", str(tmp_path)]):
        with pytest.raises(SystemExit) as done:
            eval_script.main(argv)
        err = capsys.readouterr().err
        assert done.value.code == 2 and "Traceback" not in err
        assert f"{tmp_path / '256-pyramid-on.json'}: not a readable result JSON" in err


def test_tuned_lrs_moves_the_rate_cache(tmp_path, eval_script):
    # without it, trying a setting added to the shipped train/results/neural_art/lrs.json
    other = tmp_path / "mine"
    other.mkdir()
    _cache_rates(other, {"neural-art-64px-starry_night/steps=2/adam": 0.04})
    assert eval_script.main(["64", "--optimizers", "adam", "--photos", "1", "--steps", "2", "--out",
                             str(tmp_path / "out"), "--tuned-lrs", str(other / "lrs.json")]) == 0
    assert json.loads((tmp_path / "out" / "64.json").read_text())["optimizers"]["adam"]["lr"] == 0.04
    assert not (tmp_path / "lrs.json").exists()  # the default cache (OUT, here tmp_path) untouched
    with pytest.raises(SystemExit):
        eval_script.main(["64", "--optimizers", "adam", "--tuned-lrs", str(other)])  # a folder


def test_the_grid_runs_the_weights_given_and_the_pyramid_asked_for(tmp_path, eval_script, monkeypatch, capsys):
    # Before: --weights and --pyramid were accepted and the shipped weights run, at the engine's pyramid
    from pathlib import Path

    weights = Path(__file__).resolve().parents[1] / "weights"
    for args, message in ((["--weights", f"lstm={tmp_path / 'none.safetensors'}"], "no such file"),
                          (["--optimizers", "lstm,sgd"], "grid runs lstm"),
                          (["--weights", f"other={weights / 'neural_art.safetensors'}"], "--weights other")):
        with pytest.raises(SystemExit):
            eval_script.main(["grid", "--photos", "1", "--steps", "1", *args])
        assert message in capsys.readouterr().err
    configs = []
    monkeypatch.setattr(eval_script, "stylize", lambda content, styles, cfg: configs.append(cfg) or content[..., :32, :32])
    mine = tmp_path / "mine.safetensors"
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"mine{suffix}").write_bytes((weights / f"neural_art{suffix}").read_bytes())
    assert eval_script.main(["grid", "--photos", "1", "--steps", "1", "--size", "48", "--weights", f"lstm={mine}",
                             "--pyramid", "on", "--out", str(tmp_path / "g")]) == 0
    assert [(c.optimizer, c.lstm_weights, c.pyramid) for c in configs] == [("lstm", str(mine), True), ("adam", None, True)] * 2
    assert (tmp_path / "g" / "grid.png").is_file()


def test_the_grid_aligns_its_columns_whatever_each_photos_aspect():
    from PIL import Image

    script = _train_script("eval_neural_art")
    wide = [Image.new("RGB", (6, 4), c) for c in ("red", "green")]
    tall = [Image.new("RGB", (2, 6), c) for c in ("blue", "yellow")]
    canvas = script.grid_canvas([wide, tall])
    assert canvas.size == (12, 10)
    assert canvas.getpixel((3, 2)) == (255, 0, 0) and canvas.getpixel((9, 2)) == (0, 128, 0)
    assert canvas.getpixel((3, 6)) == (0, 0, 255) and canvas.getpixel((9, 6)) == (255, 255, 0)  # under its column
    assert canvas.getpixel((0, 6)) == canvas.getpixel((11, 9)) == (255, 255, 255)  # centred, white around


# Mutation audit, round 2 (session 51): each test below failed on a one-line bug the suite missed.

def test_steps_to_reach_count_a_loss_equal_to_the_target_and_index_from_step_0():
    script = _train_script("eval_neural_art")
    report = {"best_baseline": "adam", "optimizers": {
        "adam": {"learned": False, "mean_final_loss": 0.5, "mean_curve": [1.0, 0.8, 0.5]},
        "lstm": {"learned": True, "mean_final_loss": 0.3, "mean_curve": [1.0, 0.7, 0.5, 0.3]},
        "lstm-bf16": {"learned": True, "mean_final_loss": 0.9, "mean_curve": [1.0, 0.9, 0.9, 0.9]}}}
    assert script._reach_steps(report) == {"steps_to_reach_best_baseline_final": {"lstm": 2, "lstm-bf16": None}}


def test_a_diverged_baseline_is_never_the_best_and_no_step_reaches_one():
    script = _train_script("eval_neural_art")
    # a NaN listed first was the best baseline (min() with NaN), with a NaN ratio
    out = script._summarize_curves({"sgd": [[5.0, float("nan")]], "adam": [[5.0, 2.0]], "lstm": [[5.0, 1.0]]},
                                   {"sgd": 1.0, "adam": 0.1})
    assert out["best_baseline"] == "adam" and out["lstm_over_best_baseline"] == 0.5
    # every baseline diverged: float inf (this script's JSON) or "inf" (compare's) reached at step 0, or crashed
    for inf in (float("inf"), "inf"):
        report = {"best_baseline": "adam", "optimizers": {
            "adam": {"learned": False, "mean_final_loss": inf, "mean_curve": [5.0, inf]},
            "lstm": {"learned": True, "mean_final_loss": 1.0, "mean_curve": [5.0, 1.0]}}}
        assert script._reach_steps(report) == {"steps_to_reach_best_baseline_final": {"lstm": None}}
    out = script._summarize_curves({"adam": [[5.0, float("inf")]], "lstm": [[5.0, 1.0]]}, {"adam": 0.1})
    assert out["best_baseline"] is None and out["lstm_over_best_baseline"] is None


def test_the_final_loss_band_is_mean_plus_minus_t_standard_errors():
    # Over a few photos the 95% interval takes Student's t(0.975, n - 1), not 1.96 (6.5x too narrow at n = 2)
    script = _train_script("eval_neural_art")
    out = script._summarize_curves({"adam": [[3.0, 2.0, 1.0], [3.0, 2.0, 3.0]]}, {"adam": 0.1})
    # finals 1 and 3: mean 2, sample std sqrt(2), standard error sqrt(2) / sqrt(2) = 1; t(0.975, 1) = 12.706
    assert out["optimizers"]["adam"]["final_loss_ci95"] == pytest.approx([2.0 - 12.7062, 2.0 + 12.7062], abs=1e-4)
    out = script._summarize_curves({"adam": [[1.0], [2.0], [3.0], [4.0]]}, {"adam": 0.1})
    se = (5 / 3) ** 0.5 / 2  # sample std of 1-4 over sqrt(4); t(0.975, 3) = 3.1824
    assert out["optimizers"]["adam"]["band_lo"] == pytest.approx([2.5 - 3.1824 * se], abs=1e-4)


def test_curves_of_unequal_length_keep_each_photos_own_final_loss():
    # L-BFGS's engine curves have a point per iteration, a number that differs by photo: they were all
    # cut to the shortest, so a longer run's "final" was an earlier, higher loss (mean 2.5, not 2).
    script = _train_script("eval_neural_art")
    row = script._summarize_curves({"lbfgs": [[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 3.0]]}, {"lbfgs": 1.0})["optimizers"]
    assert row["lbfgs"]["final_losses"] == [1.0, 3.0] and row["lbfgs"]["mean_final_loss"] == 2.0
    assert row["lbfgs"]["mean_curve"] == [4.0, 3.0, 2.5, 2.0]  # the shorter photo held at its last loss


def test_timing_measures_each_photo_against_that_photos_adam_final_loss():
    script = _train_script("eval_neural_art")
    curves = {"adam": [[3.0, 2.0, 1.0], [3.0, 2.5, 2.0]], "lstm": [[3.0, 1.5, 1.5], [3.0, 1.5, 1.5]]}
    row = {"times": [(1.0, 0.5), (2.0, 1.0), (3.0, 1.5)], "seconds": 3.0, "loss_seconds": 1.5}
    timing = script._timing_summary({}, curves, {"adam": [row, row], "lstm": [row, row]})
    # photo 0: never down to adam's 1.0; photo 1: at step 1, below adam's 2.0
    assert [r["seconds_to_adam_final"] for r in timing["lstm"]] == [None, 2.0]


def test_a_ratio_of_exactly_one_is_not_a_win_in_the_card(tmp_path):
    script = _train_script("eval_neural_art")
    card = tmp_path / "card.json"
    card.write_text("{}")
    rows = [{"setting": s, "style": "x.jpg", "best_baseline": "adam", "best_baseline_final": 1.0, "lstm_final": r,
             "lstm_over_best_baseline": r, "steps_to_reach": {"lstm": 5}} for s, r in (("64", 1.0), ("128", 0.9))]
    script.record_in_card(rows, card, source=tmp_path, command="cmd")
    assert json.loads(card.read_text())["beats_best_baseline_at"] == ["128"]


def test_selection_default_tie_step_is_a_quarter_and_per_seed_means_use_their_own_problems(tmp_path, shared_data):
    script = _train_script("select_neural_art")
    torch.manual_seed(0)
    w = save_learned(tmp_path / "w.safetensors", {"default": LSTMOptimizerNet()})
    w.with_suffix(".json").write_text(json.dumps({"task": "neural-art"}))
    threads = torch.get_num_threads()
    try:
        assert script.main([str(w), "--size", "16", "--steps", "8", "--problems", "2", "--val-seeds", "5", "6",
                            "--json", str(tmp_path / "sel.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "sel.json").read_text())
    assert report["rule"]["tie_break_step"] == 2  # 8 // 4 (128 steps: 32)
    s = report["weights"][str(w)]
    assert sum(s["per_seed"].values()) / 2 == pytest.approx(s["mean"])  # equal problems per seed


def test_an_engine_run_of_the_evaluation_can_turn_backoff_off_and_reports_its_multipliers(monkeypatch, eval_script):
    """bench/backoff_eval.py compares the LSTM with and without the engine's backoff through _engine_run."""
    from artopt.style.engine import StepInfo

    script = eval_script
    seen = []

    def fake_stylize(content, styles, config, callback=None, **kwargs):
        seen.append(config.backoff)
        for step, scale in ((1, None), (2, 0.5), (3, None), (4, 0.25)):
            callback(StepInfo(step=step, total_steps=4, scale_index=0, n_scales=1, size=(8, 8),
                              losses={"total": 1.0 / step}, elapsed=0.1 * step, step_scale=scale))
        return torch.zeros(1, 3, 8, 8)

    monkeypatch.setattr(script, "stylize", fake_stylize)
    monkeypatch.setattr(script, "_load_rgb", lambda path, side: torch.zeros(3, 8, 8))
    task = SimpleNamespace(root=Path("/nowhere"))
    for backoff in (True, False):
        run = script._engine_run(task, "p.jpg", torch.zeros(1, 3, 8, 8), 64, False, "adam", 0.01, 4, backoff=backoff)
        assert run["backoff_scales"] == [0.5, 0.25] and run["curve"] == [1.0, 0.5, 1 / 3, 0.25]
    assert seen == [True, False]


def test_a_diverged_run_is_written_as_strict_json_and_read_back_as_never_reached(tmp_path):
    """A diverged baseline's inf and NaN losses were written as bare Infinity and NaN, which strict
    JSON readers (browsers, jq) refuse."""
    script = _train_script("eval_neural_art")
    inf, nan = float("inf"), float("nan")
    report = {"setting": "256px-pyramid-off", "optimizers": {
        "lstm": {"learned": True, "lr": None, "mean_final_loss": 0.2, "final_losses": [0.2, 0.2],
                 "mean_curve": [1.0, 0.2], "band_lo": [1.0, 0.2], "band_hi": [1.0, 0.2], "final_loss_ci95": [0.2, 0.2]},
        "sgd": {"learned": False, "lr": 64.0, "mean_final_loss": inf, "final_losses": [inf, nan],
                "mean_curve": [1.0, inf], "band_lo": [1.0, nan], "band_hi": [1.0, nan], "final_loss_ci95": [nan, nan]},
        "adam": {"learned": False, "lr": 0.02, "mean_final_loss": 0.3, "final_losses": [0.3, 0.3],
                 "mean_curve": [1.0, 0.3], "band_lo": [1.0, 0.3], "band_hi": [1.0, 0.3], "final_loss_ci95": [0.3, 0.3]}}}
    path = tmp_path / "256-pyramid-off.json"
    report["replaced"] = [{"optimizers": ["lstm"], "mean_final_loss": {"lstm": inf}}]
    script._write_json(path, report)

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    stored = json.loads(path.read_text(), parse_constant=refuse)
    assert stored["optimizers"]["sgd"]["final_losses"] == [None, None] and stored["optimizers"]["lstm"]["lr"] is None
    back = script._read_result(path)
    sgd = back["optimizers"]["sgd"]
    assert sgd["mean_final_loss"] == inf and sgd["final_losses"] == [inf, inf] and sgd["mean_curve"] == [1.0, inf]
    assert back["optimizers"]["lstm"]["lr"] is None  # (not a loss: stays null)
    assert script.first_lstm_final(back) == inf
    script._rank(back)
    assert back["best_baseline"] == "adam" and abs(back["lstm_over_best_baseline"] - 2 / 3) < 1e-12
