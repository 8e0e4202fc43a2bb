"""The plateau schedule: reductions on the right epochs, stop after the third, state round trip."""

import pytest

from trainer.schedule import PlateauSchedule, warmup_factor


def run(errors, **kwargs):
    schedule = PlateauSchedule(0.01, **kwargs)
    decisions = []
    for error in errors:
        decisions.append(schedule.step(error))
        if decisions[-1] == "stop":
            break
    return schedule, decisions


def test_reduces_after_patience_and_stops_after_the_third_reduction():
    # patience 2: two epochs without an improvement of more than 0.001 trigger a reduction
    errors = [0.9, 0.8, 0.7, 0.7, 0.7995,          # epochs 0-4: plateau at 3, 4 -> reduce after 4
              0.6, 0.59, 0.5895, 0.6,              # 5-8: 0.5895 is not better by > 0.001 -> reduce after 8
              0.5, 0.5, 0.5,                       # 9-11: reduce after 11
              0.4, 0.3, 0.3, 0.3,                  # 12-15: third plateau after reductions -> stop at 15
              0.1]                                 # never reached
    schedule, decisions = run(errors, patience=2, threshold=0.001, max_reductions=3, max_epochs=90)
    assert schedule.reductions == [4, 8, 11]
    assert [i for i, d in enumerate(decisions) if d == "reduce"] == [4, 8, 11]
    assert decisions[-1] == "stop" and len(decisions) == 16
    assert schedule.lr == pytest.approx(0.01 * 0.1 ** 3)
    assert schedule.best_error == 0.3 and schedule.best_epoch == 13


def test_stops_at_max_epochs_without_reducing():
    schedule, decisions = run([0.5, 0.6, 0.6], patience=1, max_epochs=3)
    assert decisions == ["continue", "reduce", "stop"]  # the last epoch stops; it does not reduce again
    assert schedule.reductions == [1]


def test_state_dict_round_trip_gives_the_same_decisions():
    errors = [0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.6]
    full, decisions = run(errors, patience=2)
    first = PlateauSchedule(0.01, patience=2)
    for e in errors[:4]:
        first.step(e)
    second = PlateauSchedule(0.01, patience=2)
    second.load_state_dict(first.state_dict())
    rest = [second.step(e) for e in errors[4:]]
    assert rest == decisions[4:]
    assert second.state_dict() == full.state_dict()


def test_fresh_state_dict_is_json_safe():
    import json

    json.dumps(PlateauSchedule(0.01).state_dict())


# --- issue 18: a flat epoch right after a reduction; the state dict as strict JSON ---------------------

def test_a_flat_epoch_right_after_a_reduction_starts_a_new_count():
    # patience 2: the count of epochs without improvement restarts at each reduction, so the flat epoch
    # right after one is the first of a new plateau (not a third bad epoch that reduces again)
    schedule, decisions = run([0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6], patience=2, threshold=0.001)
    assert decisions == ["continue", "continue", "reduce", "continue", "reduce", "continue", "reduce"]
    assert schedule.reductions == [2, 4, 6] and schedule.bad_epochs == 0
    # patience 3, then an improvement in the middle of the new count: the count restarts there
    schedule, decisions = run([0.5, 0.5, 0.5, 0.5, 0.5, 0.4, 0.4, 0.4, 0.4], patience=3, threshold=0.001)
    assert decisions == ["continue"] * 3 + ["reduce"] + ["continue"] * 4 + ["reduce"]
    assert schedule.reductions == [3, 8] and schedule.best_epoch == 5


def test_state_dict_is_strict_json_before_and_after_improvements():
    import json

    schedule = PlateauSchedule(0.01, patience=1)
    states = [schedule.state_dict()]  # nothing seen yet: no best error
    for error in (0.9, 0.8, 0.85):
        schedule.step(error)
        states.append(schedule.state_dict())
    for state in states:
        assert json.loads(json.dumps(state, allow_nan=False)) == state  # no Infinity / NaN tokens
    assert states[0]["best_error"] is None and states[-1]["best_error"] == 0.8
    restored = PlateauSchedule(0.01, patience=1)
    restored.load_state_dict(json.loads(json.dumps(states[0], allow_nan=False)))
    assert restored.step(0.95) == "continue" and restored.best_error == 0.95  # the first epoch improves


def test_warmup_is_linear_in_steps_from_start_to_one():
    # 2.5 epochs of 4 steps: step s (steps done) of the run gives start + (1 - start) * (s / 4) / 2.5
    steps_per_epoch, warmup, start = 4, 2.5, 0.1
    for s in range(14):
        want = min(1.0, start + (1 - start) * s / (steps_per_epoch * warmup))
        got = warmup_factor(s // steps_per_epoch + (s % steps_per_epoch) / steps_per_epoch, warmup, start)
        assert got == pytest.approx(want, abs=1e-15), s
    assert warmup_factor(0.0, 2.5, 0.1) == 0.1
    assert warmup_factor(2.5, 2.5, 0.1) == 1.0
    assert warmup_factor(0.0, 0.0, 0.1) == 1.0  # no warmup


def test_epochs_ending_within_the_warmup_never_count_as_plateaus():
    # patience 1: without warmup, the flat second epoch reduces at once
    _, plain = run([0.9, 0.9, 0.9], patience=1, max_reductions=3)
    assert plain[:2] == ["continue", "reduce"]
    # warmup 2.5 epochs: epochs 1 and 2 end within it, epoch 3 (ending after it) is the first to count
    schedule, warm = run([0.9, 0.9, 0.9, 0.9], patience=1, max_reductions=3, warmup_epochs=2.5)
    assert warm == ["continue", "continue", "reduce", "reduce"]
    assert schedule.best_error == 0.9 and schedule.reductions == [2, 3]
