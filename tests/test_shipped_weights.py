"""The optimizers shipped in weights/: each loads without pickle, has a complete card, and works."""

import dataclasses
import functools
import importlib.util
import json

import pytest
import torch

from artopt.evaluation import lstm_factory, run_optimizer
from artopt.learned_optimizers import LSTMOptimizerConfig, LSTMOptimizerNet, load_learned
from artopt.learned_optimizers.shipped import WEIGHTS_DIR
from artopt.tasks import get_task

SHIPPED = sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def test_the_paper_suites_and_neural_art_are_shipped():
    assert {"quadratic", "mnist", "cifar10", "cifar2", "cifar_sub", "neural_art"} <= set(SHIPPED)


# weights tried and not shipped, kept beside their results so the docs' numbers can be rerun
KEPT = sorted((WEIGHTS_DIR.parent / "train" / "results").glob("*/*.safetensors"))


def test_the_kept_candidates_are_the_tried_runs_with_the_configs_their_cards_name():
    kept = {p.stem: p for p in KEPT}
    assert set(kept) == {"na_time_18", "na_u16_17", "na_multi_19", "na_level_20", "na_head_21", "na_u8_22",
                         "na_loss_23", "na_jit_24", "na_frac_25", "na_quad_26", "na_sr_27", "na_hz_28",
                         "na_rms_29", "na_sqrt_30", "na_gac_31"}
    config = {name: next(iter(load_learned(path).values())).config for name, path in kept.items()}
    card = {name: json.loads(path.with_suffix(".json").read_text()) for name, path in kept.items()}
    (shipped,) = load_learned(WEIGHTS_DIR / "neural_art.safetensors").values()
    assert config["na_time_18"].time_inputs and config["na_time_18"].moment_inputs
    levelled = config["na_level_20"]
    assert levelled.level_inputs and levelled.moment_inputs and not levelled.time_inputs
    assert config["na_loss_23"].loss_inputs and config["na_loss_23"].moment_inputs
    assert not shipped.config.loss_inputs  # the engine runs the shipped weights without a loss input
    headed = config["na_head_21"]
    assert headed.head_hidden == 32 and headed.moment_inputs and not headed.level_inputs
    # the shipped recipe: another seed, other styles, shorter truncations (the card records the unroll)
    assert config["na_u16_17"] == shipped.config == config["na_multi_19"] == config["na_u8_22"] == config["na_jit_24"]
    # ... and with another meta-fraction or meta-loss weighting (the card records it)
    assert config["na_frac_25"] == shipped.config == config["na_quad_26"] == config["na_sqrt_30"]
    assert card["na_jit_24"]["meta_training"]["loss_scale_jitter"] == 1.0
    assert card["na_frac_25"]["meta_training"]["meta_fraction"] == 0.3
    assert card["na_quad_26"]["meta_training"]["trajectory_weights"] == "quadratic"
    assert card["na_sqrt_30"]["meta_training"]["trajectory_weights"] == "sqrt"
    # ... and with global averaging cells (the shipped net has none)
    assert config["na_gac_31"].global_cells == 4 and shipped.config.global_cells == 0
    assert config["na_gac_31"] == LSTMOptimizerConfig(**{**shipped.config.to_dict(), "global_cells": 4})
    assert card["na_u8_22"]["meta_training"]["unroll"] == 8
    assert config["na_sr_27"] == shipped.config and card["na_sr_27"]["crop"].startswith("square, side [48, 80]")
    assert config["na_hz_28"] == shipped.config and card["na_hz_28"]["meta_training"]["horizon_schedule"] == "grow"
    # the shipped recipe with each run's gradients divided by the RMS of its first one
    rms = config["na_rms_29"]
    assert rms.grad_normalization == "first_rms" and rms.moment_inputs
    assert dataclasses.replace(rms, grad_normalization=shipped.config.grad_normalization) == shipped.config
    assert card["na_multi_19"]["mode"] == "multi" and len(card["na_multi_19"]["training_styles"]) > 1
    for name in kept:  # the engine's input scale needs it
        assert card[name]["trained_pixels"] == 64 * 64


@pytest.mark.parametrize("path", [WEIGHTS_DIR / f"{n}.safetensors" for n in SHIPPED] + KEPT,
                         ids=lambda p: p.stem)
def test_weights_load_and_card_is_complete(path):
    name = path.stem
    nets = load_learned(path)
    assert nets and all(isinstance(n, LSTMOptimizerNet) for n in nets.values())
    card = json.loads(path.with_suffix(".json").read_text())
    for key in ("task", "architecture", "command", "nets", "meta_training"):
        assert key in card, f"{name}.json lacks {key!r}"
    mt = card["meta_training"]
    assert mt["total_wall_time_s"] > 0 and mt["episodes_done"] > 0 and mt["best_episode"] >= 0
    assert set(card["nets"]) == set(nets)
    for net_name, cfg in card["nets"].items():
        # cards written before an option existed omit it: it has its default there
        assert nets[net_name].config == LSTMOptimizerConfig.from_dict(cfg)


def test_shipped_quadratic_optimizer_beats_its_starting_point_on_fresh_functions():
    task = get_task("quadratic")
    factory = lstm_factory(WEIGHTS_DIR / "quadratic.safetensors")
    gen = torch.Generator().manual_seed(123)
    for _ in range(3):
        run = run_optimizer(task.sample(gen, "test"), factory, steps=100)
        assert torch.isfinite(run.curve).all()
        assert run.curve[-1] < 0.2 * run.curve[0]


def test_neural_art_card_records_its_training_crop_size():
    from artopt.learned_optimizers.shipped import trained_pixels

    assert trained_pixels(WEIGHTS_DIR / "neural_art.safetensors") == 64 * 64
    assert trained_pixels(WEIGHTS_DIR / "quadratic.safetensors") is None


def test_learned_setup_reads_basis_calibration_and_crop_size_from_the_card(tmp_path):
    """What the engine runs a neural-art file with: the card's calibrated settings, or (raw) the
    ones it was meta-trained with; a file without a card is refused."""
    from artopt.learned_optimizers import save_learned
    from artopt.learned_optimizers.shipped import learned_setup

    w = save_learned(tmp_path / "w.safetensors", {"default": LSTMOptimizerNet()})
    with pytest.raises(ValueError, match="has no card"):
        learned_setup(w)
    w.with_suffix(".json").write_text(json.dumps({"basis": "pixels"}))
    assert learned_setup(w) == learned_setup(w, raw=True)  # nothing calibrated: as trained either way
    card = {"basis": {"kind": "multiscale", "levels": 4}, "trained_pixels": 64 * 64,
            "inference": {"lr": 1.25, "coarsest": 2}}
    w.with_suffix(".json").write_text(json.dumps(card))
    calibrated, raw = learned_setup(w), learned_setup(w, raw=True)
    assert (calibrated.basis, calibrated.lr, calibrated.coarsest, calibrated.trained_pixels) == ("multiscale", 1.25, 2, 4096)
    assert (raw.basis, raw.lr, raw.coarsest, raw.trained_pixels) == ("multiscale", 1.0, 8, 4096)
    assert learned_setup(w, basis="pixels").basis == "pixels"
    w.with_suffix(".json").write_text(json.dumps({**card, "inference": {"lr": -1}}))
    with pytest.raises(ValueError, match="bad inference settings"):
        learned_setup(w)
    with pytest.raises(ValueError, match="no neural-art optimizer weights"):
        learned_setup(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("card_text, message", [
    ("[1, 2]", "the card must be a JSON object, got list"),
    ("{not json", "not a readable JSON card"),
    (b"\xff\xfe", "not a readable JSON card"),
    ('{"basis": "pixels", "trained_pixels": "x"}', "trained_pixels must be a positive number of pixels, got 'x'"),
    ('{"basis": "pixels", "trained_pixels": -5}', "trained_pixels must be a positive number of pixels, got -5"),
    ('{"basis": "pixels", "trained_pixels": 0}', "trained_pixels must be a positive number of pixels, got 0"),
    # (was an OverflowError from the basis's coarsest level, read from the same number)
    ('{"basis": {"kind": "multiscale", "levels": 4}, "trained_pixels": Infinity}',
     "trained_pixels must be a positive number of pixels, got inf"),
    ('{"basis": "pixels", "inference": [1]}', "bad inference settings"),
    # accepted before, to fail at the first step without naming the card (or, true, read as 1)
    ('{"basis": "pixels", "inference": {"lr": Infinity}}', "bad inference settings"),
    ('{"basis": "pixels", "inference": {"lr": true}}', "bad inference settings"),
    ('{"basis": "pixels", "inference": {"coarsest": true}}', "bad inference settings"),
    # 0 is no rate (the run would never move) and no level size (refused only at the first step)
    ('{"basis": "pixels", "inference": {"lr": 0}}', "bad inference settings"),
    ('{"basis": "pixels", "inference": {"coarsest": 0}}', "bad inference settings"),
    ('{"basis": {"kind": "multiscale", "levels": 0}, "trained_pixels": 4096}', "bad basis levels 0"),
])
def test_a_broken_card_is_a_value_error_naming_the_card(tmp_path, card_text, message):
    """Users pass cards of their own (--lstm-weights): a broken one is an error naming the file, found
    before the run, not an AttributeError or a bad scale halfway through."""
    from artopt.learned_optimizers import save_learned
    from artopt.learned_optimizers.shipped import learned_setup

    w = save_learned(tmp_path / "w.safetensors", {"default": LSTMOptimizerNet()})
    card_path = w.with_suffix(".json")
    card_path.write_bytes(card_text if isinstance(card_text, bytes) else card_text.encode())
    with pytest.raises(ValueError) as exc:
        learned_setup(w)
    assert str(exc.value).startswith(f"{card_path}: ") and message in str(exc.value)


def test_the_neural_art_cards_user_settings_checks_match_their_benchmark_results():
    """The card's 'LSTM lower in N of N runs' lines are read off the bench JSONs they name."""
    card = json.loads((WEIGHTS_DIR / "neural_art.json").read_text())["user_settings_checks"]
    results = WEIGHTS_DIR.parent / "bench" / "results"
    weights = json.loads((results / "loss_weights.json").read_text())["runs"]
    assert len(weights) == 14 and all(r["lstm_over_adam"] < 1 for r in weights)
    assert "14 of 14" in card["loss_weights"]
    for name, key in (("style_sweep", "styles"), ("style_sweep_512", "styles_512px")):
        sweep = json.loads((results / f"{name}.json").read_text())
        assert sweep["lstm_lower"] == sweep["runs_count"] == 16 and "16 of 16" in card[key]
        assert "starry_night" not in {r["style"].removesuffix(".jpg") for r in sweep["runs"]}  # the training style
    for run in json.loads((results / "long_runs.json").read_text())["runs"]:
        assert all(r < 1 for r in run["lstm_over_adam"].values())
    for name, key in (("adam_rates", "adam_best_rate"), ("adam_rates_multiscale", "adam_on_the_basis_best_rate"),
                      ("adam_rates_handoff", "adam_best_rate_with_handoff"),
                      ("adam_rates_multiscale_handoff", "adam_on_the_basis_best_rate_with_handoff")):
        found = json.loads((results / f"{name}.json").read_text())
        assert f"lower in {found['lstm_lower_than_best_adam']} of {found['runs_count']}" in card[key]
        assert f"median {found['median_ratio']:.2f}" in card[key] or f"median {found['median_ratio']:.3f}" in card[key]
    for name in ("user_options", "user_options_512", "user_options_handoff", "user_options_handoff_512"):
        runs = json.loads((results / f"{name}.json").read_text())["runs"]
        assert len(runs) == 16 and all(r["lstm_over_adam"] < 1 for r in runs)
    assert card["user_options"].count("16 of 16") == card["user_options_with_handoff"].count("16 of 16") == 2
    found = json.loads((results / "sizes_handoff.json").read_text())
    assert all(r["lstm_over_adam"] < 1 for r in found["runs"]) and len(found["runs"]) == 8
    assert f"96 px chelsea (the handoff acting, {found['runs'][0]['lstm_over_adam']:.3f}" in card["sizes"]
    found = json.loads((results / "new_inputs_handoff.json").read_text())
    assert found["lstm_lower"] == found["runs_count"] == 8
    assert " / ".join(f"{r['lstm_over_adam']:.3f}" for r in found["runs"] if r["size"] == 256) in card["new_inputs"]
    runs = json.loads((results / "user_options_handoff.json").read_text())["runs"]
    keep = [round(r["lstm_over_adam"], 2) for r in runs if r["setting"] == "keep colors"]
    assert f"now {keep[0]:.2f} / {keep[1]:.2f} of Adam at 256 px" in card["user_options_with_handoff"]


@functools.cache
def _eval_script():
    spec = importlib.util.spec_from_file_location("eval_neural_art_for_cards",
                                                  WEIGHTS_DIR.parent / "train" / "eval_neural_art.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _first_lstm_final(table: dict) -> float:
    """train/eval_neural_art.py's first_lstm_final: the LSTM's mean as first committed, before --replace."""
    return _eval_script().first_lstm_final(table)


def test_the_neural_art_evaluation_tables_run_the_engines_current_defaults():
    """The engine settings' LSTM rows were rerun with --replace under the engine's defaults of session 58:
    they repeat, to the last digit, the reruns of the last two default rules on the same photos (the
    pyramid settings: handoff_finer's part (b'); without the pyramid, where it cannot act: the handoff's),
    the baselines keep their runs, and the card's table is these files'.  The previous weights' rows were
    rerun the same way (session 60)."""
    results = WEIGHTS_DIR.parent / "train" / "results" / "neural_art"
    finer = json.loads((results / "ablation-handoff-finer-lr0.0036-within0.62.json").read_text())["table"]
    handoff = json.loads((results / "ablation-handoff-lr0.0009-w10.json").read_text())["table"]
    card = json.loads((WEIGHTS_DIR / "neural_art.json").read_text())["evaluation"]["table"]
    for name in ("256-pyramid-on", "256-pyramid-off", "384-pyramid-on", "512-pyramid-on", "512-pyramid-off"):
        table = json.loads((results / f"{name}.json").read_text())
        lstm = table["optimizers"]["lstm"]["mean_final_loss"]
        report = finer.get(name) or handoff[name]
        assert lstm == report["finer" if name in finer else "handoff"]["mean_final"]
        # session 59 replaced the LSTM's row, session 60 the previous weights' (lstm-prev): no learned row is
        # older; session 61 L-BFGS's where its photos' curves differ in length (their summary had cut them
        # to the shortest), so the rules' reports hold the best baseline's final loss as it was before
        rerun_lbfgs = name != "512-pyramid-on"
        best_then = (table["replaced"][2]["mean_final_loss"]["lbfgs"] if rerun_lbfgs
                     else table["best_baseline_final_loss"])
        assert (table["photos"], best_then) == (report["photos"], report["best_baseline_final_loss"])
        replaced = [["lstm"], ["lstm-prev"]] + [["lbfgs"]] * rerun_lbfgs
        assert [r["optimizers"] for r in table["replaced"]] == replaced
        assert [a["optimizers"] for a in table["added"] if a.get("replacing")] == replaced
        assert table["best_baseline"] == "lbfgs" and table["best_baseline_final_loss"] <= best_then
        row = card[name.replace("-pyramid", "px-pyramid")]
        assert (row["lstm_final"], row["lstm_over_best_baseline"]) == (lstm, table["lstm_over_best_baseline"])
        assert row["steps_to_reach_best_baseline_final"] == table["steps_to_reach_best_baseline_final"]["lstm"]


def test_the_neural_art_cards_backoff_figures_are_those_of_their_result_files():
    """The card's evaluation with backoff is read off ablation-backoff-*.json, whose runs without backoff
    are the committed evaluation's (so the card's figures without it are the table's)."""
    card = json.loads((WEIGHTS_DIR / "neural_art.json").read_text())
    results = WEIGHTS_DIR.parent / "train" / "results" / "neural_art"
    for setting, entry in card["backoff"]["evaluation"].items():
        name = setting.replace("px", "")
        found = json.loads((results / f"ablation-backoff-{name}.json").read_text())
        assert round(found["backoff"]["over_best_baseline"], 3) == entry["lstm_over_best_baseline"]
        assert round(found["no_backoff"]["over_best_baseline"], 3) == entry["without"]
        assert found["backoff"]["photos_backed_off"] == entry["photos_backed_off"]
        assert found["no_backoff"]["mean_final"] == found["committed_lstm_mean_final"] == _first_lstm_final(
            json.loads((results / f"{name}.json").read_text()))
        assert found["backoff"]["mean_final"] <= found["no_backoff"]["mean_final"]


def test_the_neural_art_cards_fine_scale_step_figures_are_those_of_their_result_files():
    """The card's fine_scale_step entry is read off the validation report (whose rule chose the engine's
    default) and the test reruns, whose full-step runs are the backoff reruns (or, where backoff did
    not act, the committed evaluation)."""
    from artopt.style.engine import FINE_SCALE_STEP

    card = json.loads((WEIGHTS_DIR / "neural_art.json").read_text())["fine_scale_step"]
    root = WEIGHTS_DIR.parent
    val = json.loads((root / "bench" / "results" / "fine_scale_step_val.json").read_text())
    assert val["chosen"] == FINE_SCALE_STEP
    for m, entry in card["validation_ratios_to_full_step"].items():
        assert entry == {f"{s}px": round(r, 4) for s, r in val["candidates"][m]["ratios"].items()}
    results = root / "train" / "results" / "neural_art"
    for setting, entry in card["evaluation"].items():
        name = setting.replace("px", "")
        found = json.loads((results / f"ablation-fine-scale-step-{name}.json").read_text())
        chosen, full = found[f"step_{FINE_SCALE_STEP:g}"], found["step_1"]
        assert round(chosen["over_best_baseline"], 3) == entry["lstm_over_best_baseline"]
        assert round(full["over_best_baseline"], 3) == entry["full_step"]
        assert chosen["final_scale_steps_to_best_baseline"] == entry["final_scale_steps_to_best_baseline"]
        assert full["final_scale_steps_to_best_baseline"] == entry["full_step_final_scale_steps_to_best_baseline"]
        backoff = results / f"ablation-backoff-{name}.json"
        before = (json.loads(backoff.read_text())["backoff"]["mean_final"] if backoff.is_file()
                  else _first_lstm_final(json.loads((results / f"{name}.json").read_text())))
        assert full["mean_final"] == before


def test_the_neural_art_cards_carry_state_figures_are_those_of_their_result_files():
    card = json.loads((WEIGHTS_DIR / "neural_art.json").read_text())["carry_state"]
    root = WEIGHTS_DIR.parent
    val = json.loads((root / "bench" / "results" / "carry_state_val.json").read_text())
    assert val["chosen"] is None
    for name, entry in card["validation_ratios_to_default"].items():
        assert entry == {f"{s}px": round(r, 4) for s, r in val["candidates"][name]["ratios"].items()}
        assert all(r > 1 for r in entry.values())
    for setting, entry in card["test_lstm_over_best_baseline"].items():
        found = json.loads((root / "train" / "results" / "neural_art" /
                            f"ablation-carry-state-{setting.replace('px', '')}.json").read_text())
        assert round(found["carry, step 1"]["over_best_baseline"], 3) == entry["carry_full_step"]
        assert round(found["no carry, step 0.5"]["over_best_baseline"], 3) == entry["default"]
        # the default's runs are those of the fine_scale_step reruns
        assert found["no carry, step 0.5"]["mean_final"] == json.loads((root / "train" / "results" / "neural_art" / (
            f"ablation-fine-scale-step-{setting.replace('px', '')}.json")).read_text())["step_0.5"]["mean_final"]


def test_the_neural_art_cards_handoff_figures_are_those_of_the_probe():
    card = json.loads((WEIGHTS_DIR / "neural_art.json").read_text())["handoff"]
    probe = json.loads((WEIGHTS_DIR.parent / "bench" / "results" / "handoff_probe.json").read_text())
    assert card["ratios"] == {k: round(v["ratio"], 4) for k, v in probe["table"].items()}
    assert card["photos_handed_off"] == {k: v["photos_handed_off"] for k, v in probe["table"].items()}
    for lr in ("0.0018", "0.0009"):
        smaller = json.loads((WEIGHTS_DIR.parent / "bench" / "results" / f"handoff_probe_lr{lr}.json").read_text())
        assert smaller["handoff_lr"] == float(lr)
        assert card[f"ratios_lr_{lr}"] == {k: round(v["ratio"], 4) for k, v in smaller["table"].items()}
        for key, row in smaller["table"].items():  # the same runs without the handoff as the first probe's
            assert row["off"] == probe["table"][key]["off"]
    rule = json.loads((WEIGHTS_DIR.parent / "bench" / "results" / "handoff_rule_lr0.0009.json").read_text())["table"]
    assert card["rule_lr_0.0009"]["ratios"] == {k: round(v["ratio"], 4) for k, v in rule.items()}
    # the rule (401709d): lower for both far styles at both sizes, at most 0.5% higher for the held-out style
    holds = all(rule[f"{s} px {far}"]["ratio"] < 1 for s in (256, 512)
                for far in ("piano_keyboard_sketch", "vallotton_camille_mauclair")) and all(
        rule[f"{s} px woman_with_a_hat"]["ratio"] <= 1.005 for s in (256, 512))
    assert card["rule_lr_0.0009"]["holds"] == holds
    # the default rule (c803006): its test settings' part and the 256 px style sweep's figures
    default = card["default_rule_lr_0.0009"]
    test = json.loads((WEIGHTS_DIR.parent / "train" / "results" / "neural_art" / "ablation-handoff-lr0.0009.json").read_text())
    assert default["test_ratios"] == {k: round(v["handoff_over_off"], 4) for k, v in test["table"].items()}
    assert default["test_photos_handed_off"] == {k: v["photos_handed_off"] for k, v in test["table"].items()}
    assert test["part_1_holds"] == all(v["handoff_over_off"] <= 1.005 for v in test["table"].values())
    assert default["holds"] is False and not test["part_1_holds"]
    sweep = json.loads((WEIGHTS_DIR.parent / "bench" / "results" / "style_sweep_handoff.json").read_text())["handoff"]
    assert default["style_sweep_256"] == {
        **{f"{k}_over_no_handoff": round(sweep[f"{k}_over_lstm"], 4) for k in ("mean", "best", "worst")},
        "runs_handed_off": sweep["runs_handed_off"], "lower_than_adam": sweep["lower_than_adam"]}
    # the warm-up rule (3fc3b33): each part recomputed from its files; it held, so the engine hands off by default
    warm = card["warmup_rule"]
    results = WEIGHTS_DIR.parent / "bench" / "results"
    val = json.loads((results / "handoff_rule_flat_lr0.0009_w10.json").read_text())["table"]
    assert warm["validation_ratios"] == {k: round(v["ratio"], 4) for k, v in val.items()}
    part_a = all(val[f"{s} px {far}"]["ratio"] < 1 for s in (256, 512)
                 for far in ("piano_keyboard_sketch", "vallotton_camille_mauclair")) and all(
        val[f"{s} px woman_with_a_hat"]["ratio"] <= 1.002 for s in (256, 512))
    test = json.loads((WEIGHTS_DIR.parent / "train" / "results" / "neural_art" / "ablation-handoff-lr0.0009-w10.json").read_text())
    assert warm["test_ratios"] == {k: round(v["handoff_over_off"], 4) for k, v in test["table"].items()}
    assert warm["test_over_best_baseline"] == {k: round(v["handoff"]["over_best_baseline"], 4) for k, v in test["table"].items()}
    part_b = all(v["handoff_over_off"] <= 1.005 for v in test["table"].values())
    sweeps = [json.loads((results / f"style_sweep_handoff_w10{suffix}.json").read_text()) for suffix in ("", "_512")]
    part_c = True
    for key, sweep in zip(("style_sweep_256", "style_sweep_512"), sweeps):
        h = sweep["handoff"]
        assert (h["lr"], h["warmup"]) == (0.0009, 10) and warm[key]["mean_over_no_handoff"] == round(h["mean_over_lstm"], 4)
        assert h["lower_than_adam"] == sum(r["lstm_handoff_over_adam"] < 1 for r in sweep["runs"]) == warm[key]["lower_than_adam"]
        part_c = part_c and h["mean_over_lstm"] < 1 and max(r["handoff_over_lstm"] for r in sweep["runs"]) <= 1.05 \
            and h["lower_than_adam"] == len(sweep["runs"]) == 16
    assert warm["holds"] == {"a": part_a, "b": part_b, "c": part_c, "all": part_a and part_b and part_c}
    from artopt.style.engine import StylizeConfig

    default = StylizeConfig()
    assert warm["holds"]["all"] and (default.handoff_lr, default.handoff_warmup) == (0.0009, 10)


def test_the_neural_art_cards_handoff_finer_figures_are_those_of_the_result_files():
    """The card's figures for --handoff-finer-lr, and its verdict, read off the runs' reports."""
    card = json.loads((WEIGHTS_DIR / "neural_art.json").read_text())["handoff_finer"]
    results = WEIGHTS_DIR.parent / "bench" / "results"
    probe = json.loads((results / "handoff_finer_probe.json").read_text())
    assert card["probe_ratios"] == {f"{s} lr {v}": round(row[v]["over_engine"], 4)
                                    for s, row in probe["table"].items() for v in ("0.0009", "0.0036")}
    assert card["picked_lr"] == float(probe["lower_sum"]) == min(probe["lrs"], key=lambda v: probe["sum_of_ratios"][f"{v:g}"])
    val = json.loads((results / "handoff_finer_rule_val.json").read_text())
    assert val["lrs"] == [card["picked_lr"]] and val["photos"] != probe["photos"]
    assert card["val_ratios"] == {s: round(row["0.0036"]["over_engine"], 4) for s, row in val["table"].items()}
    test = json.loads((WEIGHTS_DIR.parent / "train" / "results" / "neural_art" / "ablation-handoff-finer-lr0.0036.json").read_text())
    assert card["test_ratios"] == {k: round(v["finer_over_engine"], 4) for k, v in test["table"].items()}
    sweep = json.loads((results / "style_sweep_handoff_finer_512.json").read_text())["handoff_finer"]
    assert card["style_sweep_512"]["mean_over_engine"] == round(sweep["mean_over_lstm"], 4)
    holds = (all(row["holds"] for row in (r["0.0036"] for r in val["table"].values())) and test["part_b_holds"]
             and sweep["mean_over_lstm"] <= 1 and sweep["worst_over_lstm"] <= 1.02 and sweep["lower_than_adam"] == 16)
    assert card["holds"] is holds is False and not test["part_b_holds"]
    fresh = json.loads((results / "handoff_finer_probe_fresh.json").read_text())
    assert fresh["fresh_photos"] and fresh["where_it_acts"] and not set(fresh["photos"]) & set(probe["photos"] + val["photos"])
    assert card["probe_fresh_photos"]["ratios"] == {s: round(row["0.0036"]["over_engine"], 4) for s, row in fresh["table"].items()}
    assert card["next"].startswith("session 58")  # (the rule failed; session 58's below made it the default)


def test_the_neural_art_cards_handoff_finer_within_figures_are_those_of_the_result_files():
    """Session 58's rule for --handoff-finer-within: the threshold, each part's figures and the verdict
    read off the runs' reports, and the engine's defaults follow the verdict."""
    card = json.loads((WEIGHTS_DIR / "neural_art.json").read_text())["handoff_finer_within"]
    results = WEIGHTS_DIR.parent / "bench" / "results"
    when = json.loads((results / "handoff_finer_when.json").read_text())
    assert when["pick"]["within"] == card["when"]["within"] == 0.62 and card["when"]["runs"] == len(when["rows"]) == 28
    assert all(r["repeats_committed_final"] for r in when["rows"]) and card["when"]["repeats_committed_finals"]
    gain = [r["lstm_steps_before_coarse_handoff"] for r in when["rows"] if r["finer_over_engine"] < 1]
    loss = [r["lstm_steps_before_coarse_handoff"] for r in when["rows"] if r["finer_over_engine"] >= 1]
    assert card["when"]["gain_steps_before_handoff"] == [min(gain), max(gain)]
    assert card["when"]["loss_steps_before_handoff"] == [min(loss), max(loss)] and max(gain) < min(loss)
    val = json.loads((results / "handoff_finer_within_val.json").read_text())
    a = val["table"]["rule_a_prime_0.0036"]
    assert val["within"] == 0.62 and val["where_it_acts"] and val["fresh_photos"] == 58
    assert card["val_style_mean_ratios"] == {s: round(v, 4) for s, v in a["style_means"].items()}
    assert card["val_mean"] == round(a["mean"], 4) and len(a["style_means"]) == 8
    earlier = set(json.loads((results / "handoff_finer_probe.json").read_text())["photos"])
    for name in ("handoff_finer_rule_val.json", "handoff_finer_probe_fresh.json"):
        earlier |= set(json.loads((results / name).read_text())["photos"])
    assert not set(val["photos"]) & earlier  # (photos no earlier run of this question used)
    test = json.loads((WEIGHTS_DIR.parent / "train" / "results" / "neural_art" /
                       "ablation-handoff-finer-lr0.0036-within0.62.json").read_text())
    assert card["test_ratios"] == {k: round(v["finer_over_engine"], 4) for k, v in test["table"].items()}
    sweep = json.loads((results / "style_sweep_handoff_finer_within_512.json").read_text())["handoff_finer"]
    assert sweep["within"] == 0.62 and card["style_sweep_512"]["mean_over_engine"] == round(sweep["mean_over_lstm"], 4)
    holds = (a["holds"] and test["part_b_holds"] and sweep["mean_over_lstm"] <= 1 and sweep["worst_over_lstm"] <= 1.02
             and sweep["lower_than_adam"] == 16)
    assert card["holds"] is holds is True
    from artopt.style.engine import StylizeConfig

    assert StylizeConfig().handoff_finer_lr == 0.0036 and "session 65" in card["superseded"]  # (the gate: below)
    after = json.loads((results / "adam_rates_multiscale_handoff_finer_512.json").read_text())
    assert card["adam_rates_512"]["lstm_over_best_adam"] == {
        f"{r['photo']} {r['style']}": round(r["lstm_over_best_adam"], 4) for r in after["runs"]}


def test_the_neural_art_cards_handoff_finer_steps_figures_are_those_of_the_result_files():
    """Session 65's rules for --handoff-finer-steps: the refit's thresholds, each check's figures and the
    verdict read off the runs' reports, and the engine's defaults follow the verdict."""
    card = json.loads((WEIGHTS_DIR / "neural_art.json").read_text())["handoff_finer_steps"]
    results = WEIGHTS_DIR.parent / "bench" / "results"
    when = json.loads((results / "handoff_finer_when_framed_style.json").read_text())
    assert (when["pick"]["within"], when["pick_steps"]["steps"]) == (card["refit"]["within"], card["refit"]["steps"]) == (0.62, 83)
    gain = [r["lstm_steps_before_coarse_handoff"] for r in when["rows"] if r["finer_over_engine"] < 1]
    loss = [r["lstm_steps_before_coarse_handoff"] for r in when["rows"] if r["finer_over_engine"] >= 1]
    assert card["refit"]["gain_steps_before_handoff"] == [min(gain), max(gain)] and max(gain) < 83 < min(loss)
    assert card["refit"]["loss_steps_before_handoff"] == [min(loss), max(loss)]
    a = json.loads((results / "handoff_finer_refit_check_steps83.json").read_text())
    assert a["handoff_finer_steps"] == 83 and a["against"] == 0.62 and card["A_fresh_photos_512"]["mean"] == a["rule"]["mean"]
    b = json.loads((WEIGHTS_DIR.parent / "train" / "results" / "neural_art" /
                    "ablation-handoff-finer-lr0.0036-steps83-against0.62.json").read_text())
    assert card["B_test_ratios_over_within_0_62"] == {k: round(v["finer_over_against"], 4) for k, v in b["table"].items()}
    sweep = json.loads((results / "style_sweep_handoff_finer_steps83_512.json").read_text())["handoff_finer"]
    assert (sweep["within"], sweep["steps"]) == (1, 83) and card["C_style_sweep_512"]["mean_over_defaults"] == round(
        sweep["mean_over_lstm"], 4)
    rates = json.loads((results / "adam_rates_multiscale_finer_steps83_512.json").read_text())
    assert rates["lstm_flags"][:4] == ["--handoff-finer-within", "1", "--handoff-finer-steps", "83"]
    assert card["C_adam_rates_512"]["lstm_over_best_adam"] == {
        f"{r['photo']} {r['style']}": round(r["lstm_over_best_adam"], 4) for r in rates["runs"]}
    holds = (a["rule"]["holds"] and b["part_b_holds"] and sweep["mean_over_lstm"] <= 1 and sweep["worst_over_lstm"] <= 1.02
             and sweep["lower_than_adam"] == 16 and rates["mean_over_lstm_defaults"] <= 1
             and rates["worst_over_lstm_defaults"] <= 1.02)
    assert card["holds"] is holds is True
    probe = json.loads((results / "handoff_finer_probe_256_fresh59.json").read_text())
    assert probe["size"] == 256 and probe["table"]["rule_a_prime_0.0036"]["mean"] <= 1  # part 3: the option stays
    from artopt.style.engine import StylizeConfig

    default = StylizeConfig()
    assert (default.handoff_finer_lr, default.handoff_finer_within, default.handoff_finer_steps) == (0.0036, 1.0, 83)


def _mean_times(run: dict) -> dict[str, float]:
    """Each optimizer's mean over the photos of a timed evaluation run's seconds to the Adam run's final loss."""
    return {name: sum(r["seconds_to_adam_final"] for r in rows) / len(rows) for name, rows in run["timing"].items()}


def _timed_check(card_key: str, speed_file: str) -> tuple[dict, dict, dict]:
    """The card's entry ``card_key``, the speed report bench/results/``speed_file`` and the evaluation run it
    read, checking that the report's and the card's mean times are the run's."""
    root = WEIGHTS_DIR.parent
    card = json.loads((WEIGHTS_DIR / "neural_art.json").read_text())[card_key]
    speed = json.loads((root / "bench" / "results" / speed_file).read_text())
    run = json.loads((root / speed["source"]).read_text())
    for name, mean in _mean_times(run).items():
        assert mean == speed["mean_seconds_to_adam_final"][name] and card["seconds_to_adam_final"][name] == round(mean, 1)
    return card, speed, run


def test_the_neural_art_cards_coarse_share_figures_are_those_of_the_result_files():
    """Session 59's timed check of --coarse-share 0.1: the card's figures and verdict read off the reports,
    the report off the kept evaluation run, and the engine's default split unchanged."""
    from artopt.style.engine import StylizeConfig, split_steps

    root = WEIGHTS_DIR.parent
    card, speed, run = _timed_check("coarse_share", "coarse_share_speed.json")
    assert set(run["optimizers"]) == {"lstm-coarse0.1", "adam", "adam-coarse0.1"} and run["steps"] == 200
    assert card["lstm_speedup"] == round(speed["lstm_speedup"], 3) and speed["lstm_speedup"] < 2
    assert card["met"] is speed["met"] is False and not card["default_changed"]
    assert card["mean_final_loss_200_steps"] == {k: round(v["mean_final_loss"], 4) for k, v in run["optimizers"].items()}
    val = json.loads((root / "bench" / "results" / "coarse_share_val.json").read_text())
    assert card["val_final_scale_start"] == {f"{r['photo']} {r['coarse_steps']} coarse steps":
                                             round(r["final_scale_losses"]["0"], 4) for r in val["rows"]}
    assert StylizeConfig().coarse_share is None and split_steps(200, 2) == [134, 66]
    cli = json.loads((root / "bench" / "results" / "coarse_share_cli.json").read_text())
    same_time = card["cli_same_time"]
    assert same_time["loss_ratios"] == {f"{r['photo']} {r['style']}": round(r["loss_ratio"], 3) for r in cli["rows"]}
    assert same_time["time_ratios"] == {f"{r['photo']} {r['style']}": round(r["time_ratio"], 2) for r in cli["rows"]}
    assert min(same_time["loss_ratios"].values()) < 1 < max(same_time["loss_ratios"].values())  # (why the default stays)


def test_the_neural_art_cards_adam_levels_figures_are_those_of_the_result_files():
    """Session 60's timed check of --adam-levels 2 --coarse-share 0.1: the card's figures and verdict read off
    the reports, the report off the kept evaluation run, the choice off the validation runs, and the engine's
    default unchanged."""
    from artopt.style.engine import StylizeConfig

    root = WEIGHTS_DIR.parent
    card, speed, run = _timed_check("adam_levels", "adam_levels_speed.json")
    assert set(run["optimizers"]) == {"lstm-adamlevels2-coarse0.1", "adam", "adam-coarse0.1"} and run["steps"] == 200
    assert card["speedup"] == round(speed["lstm_speedup"], 3) and (speed["lstm_speedup"] >= 2) is speed["met"] is card["met"]
    assert card["mean_final_loss_200_steps"] == {k: round(v["mean_final_loss"], 4) for k, v in run["optimizers"].items()}
    val = json.loads((root / "bench" / "results" / "adam_levels_val.json").read_text())
    means = val["mean_seconds_to_adam_final"]
    assert val["chosen"] == card["chosen"] == min((1, 2), key=lambda k: means[str(k)])
    assert f"lstm-adamlevels{val['chosen']}-coarse0.1" in run["optimizers"]
    assert card["val_mean_seconds_to_adam_final"] == {k: round(v, 1) for k, v in means.items()}
    assert StylizeConfig().adam_levels == 0 and not card["default_changed"]
    cli = json.loads((root / "bench" / "results" / "adam_levels_cli.json").read_text())
    for name in ("adam levels 2", "adam levels 2, 200 steps"):
        assert card["cli"]["loss_ratios"][name] == {f"{r['photo']} {r['style']}": round(r["ratios"][name]["loss"], 3)
                                                    for r in cli["rows"]}
        assert card["cli"]["time_ratios"][name] == {f"{r['photo']} {r['style']}": round(r["ratios"][name]["time"], 2)
                                                    for r in cli["rows"]}
    assert max(card["cli"]["loss_ratios"]["adam levels 2"].values()) > 1  # (why the default stays)
    recheck = json.loads((root / card["recheck"]["source"]).read_text())
    assert {k: v["mean_curve"] for k, v in recheck["optimizers"].items()} == {
        k: v["mean_curve"] for k, v in run["optimizers"].items()}  # (the same losses to the last digit)
    means = _mean_times(recheck)
    assert card["recheck"]["seconds_to_adam_final"] == {k: round(v, 1) for k, v in means.items()}
    assert card["recheck"]["speedup"] == round(min(means["adam"], means["adam-coarse0.1"])
                                               / means["lstm-adamlevels2-coarse0.1"], 3)
    two = json.loads((root / card["threads2"]["source"]).read_text())
    assert two["timing_conditions"]["threads"] == 2
    means = _mean_times(two)
    assert card["threads2"]["seconds_to_adam_final"] == {k: round(v, 1) for k, v in means.items()}
    assert card["threads2"]["speedup"] == round(min(means["adam"], means["adam-coarse0.1"])
                                                / means["lstm-adamlevels2-coarse0.1"], 3)


def test_the_neural_art_cards_photo_split_is_the_datas_and_holds_the_evaluations_test_photos(shared_data):
    # The split goes by the rank of a hash of the names: a changed photo folder would move photos across
    # it, and the card records the one the optimizer was trained and evaluated on.
    from artopt.tasks.neural_art import split_digest, split_photos

    card = json.loads((WEIGHTS_DIR / "neural_art.json").read_text())
    split = split_photos(shared_data / "imagenet-sample")
    assert card["photo_split"]["digest"] == split_digest(split)
    assert (card["photo_split"]["val"], card["photo_split"]["test"]) == (split["val"], split["test"])
    results = WEIGHTS_DIR.parent / "train" / "results" / "neural_art"
    reports = [json.loads(f.read_text()) for f in results.glob("*.json")]
    evaluated = {photo for r in reports if isinstance(r, dict) for photo in (r.get("photos") or [])}  # (engine settings)
    assert evaluated and evaluated <= set(split["test"])
