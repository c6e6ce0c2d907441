"""--time-budget: durations, the number of steps a measured pace allows, the learning rate's end, resuming.

The pace is made exact by a clock that moves only when a step is done (0.5 s a step), so nothing here
depends on how fast the machine is."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from diffgen.budget import Budget, parse_duration
from diffgen.cli import app
from diffgen.config import TrainConfig, new_config, resumed
from diffgen.errors import OptionError
from diffgen.events import Estimate, StepDone
from diffgen.objective import learning_rate
from diffgen.state import load_config
from diffgen.train import train

STEP = 0.5  # seconds a step takes on the test clock, where sample grids and checkpoints take no time


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400),
                                           ("1.5h", 5400), ("2M", 120), (" 1m30s ", 90), ("1h0m5s", 3605)])
def test_durations_with_units_are_read(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "", "m", "30x", "1m1h", "-5m", "0s", "1 h", "h30", "30mins", "1e3s"])
def test_durations_without_a_unit_or_time_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


class StepClock:
    """A clock that moves STEP seconds each time the trainer says a step is done, and never otherwise."""

    def __init__(self):
        self.now, self.events = 0.0, []

    def __call__(self) -> float:
        return self.now

    def callback(self, event) -> None:
        self.events.append(event)
        if isinstance(event, StepDone):
            self.now += STEP


def config(data, out, **kw):
    base = TrainConfig(data_dir=data, out_dir=out, image_size=16, batch_size=4, warmup_steps=2, save_every=100,
                       sample_every=100, log_every=1, sample_steps=2, device="cpu")
    return replace(base, **kw)


def budget_steps(seconds: float) -> int:
    return int(seconds / STEP)


def test_a_budget_sets_the_steps_from_the_measured_pace_and_records_them(class_folder, tmp_path):
    clock, out = StepClock(), tmp_path / "r"
    done = train(config(class_folder, out, time_budget="10s"), callback=clock.callback, clock=clock)
    assert done.step == budget_steps(10) == 20
    saved = load_config(out / "state.safetensors")
    assert (saved.max_steps, saved.time_budget) == (20, None)  # a resume without a budget goes on to the same step
    with safe_open(out / "model.safetensors", "pt") as f:
        extra = json.loads(f.metadata()["spec"])["extra"]
    assert extra["time_budget"] == {"budget": "10s", "from_step": 0, "steps": 20}
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 21)) and log[1]["budget_steps"] == 20
    said = [e for e in clock.events if isinstance(e, Estimate)]
    assert said == [Estimate((20 - 9) * STEP, 9, total=20, budget=10.0)]  # once, after 8 timed steps


def test_the_decayed_learning_rate_ends_at_the_step_the_budget_chose(class_folder, tmp_path):
    clock, out = StepClock(), tmp_path / "r"
    cfg = config(class_folder, out, time_budget="10s", lr_decay=True)
    done = train(cfg, callback=clock.callback, clock=clock)
    ended = replace(cfg, max_steps=done.step, time_budget=None)
    lrs = [json.loads(line)["lr"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert lrs == [pytest.approx(learning_rate(ended, step)) for step in range(done.step)]
    assert learning_rate(ended, done.step) == pytest.approx(0, abs=1e-12) and lrs[-1] > 0


def test_a_budget_on_resume_adds_the_steps_it_allows(class_folder, tmp_path):
    out = tmp_path / "r"
    first = StepClock()
    train(config(class_folder, out, time_budget="10s"), callback=first.callback, clock=first)
    again = StepClock()
    cfg = resumed(load_config(out / "state.safetensors"), {"time_budget": "5s"})
    done = train(cfg, callback=again.callback, clock=again, resume=True)
    assert (done.step, done.steps_run) == (20 + budget_steps(5), budget_steps(5))
    assert load_config(out / "state.safetensors").max_steps == done.step
    later = train(resumed(load_config(out / "state.safetensors"), {}), resume=True)  # no budget: it has finished
    assert later.steps_run == 0


def test_a_budget_counts_grids_and_checkpoints_and_every_rank_takes_the_slowest_pace():
    now = [0.0]
    agreed = lambda value: max(value, 2 * STEP if value == STEP else value)  # another rank steps at twice our time
    budget = Budget(100.0, 0, sample_every=10, save_every=5, grid_steps=4.0, t0=0.0, clock=lambda: now[0], agree=agreed)
    decisions = {}
    for step in range(1, 11):
        now[0] += STEP + (3.0 if step % 10 == 0 else 0) + (1.0 if step % 5 == 0 else 0)
        if decision := budget.after(step, 1000):
            decisions[step] = decision.total
    # At step 10, 10 s have passed (a grid took 3 s more than a step, a checkpoint 1 s more) and the agreed pace
    # is 1 s a step: a run to step N adds N - 10 steps, a grid every 10 steps and a checkpoint every 5, the
    # final ones included, in the 90 s left.
    cost = lambda n: (n - 10) * 1.0 + 3.0 * ((n - 1) // 10 - 1 + 1) + 1.0 * ((n - 1) // 5 - 2 + 1)
    expected = max(n for n in range(11, 200) if cost(n) <= 90)
    assert decisions[10] == expected
    assert sorted(decisions) == [2, 3, 5, 9, 10]  # after 1, 2, 4, 8 timed steps, and each grid or checkpoint


def test_a_run_cut_short_by_a_busy_spell_grows_again_when_the_pace_recovers():
    now, total, step = [0.0], 1000, 0
    budget = Budget(100.0, 0, sample_every=1000, save_every=1000, t0=0.0, clock=lambda: now[0])
    while step < total:
        step += 1
        now[0] += 4.0 if 17 <= step <= 32 else 1.0  # another job takes the core for 16 steps
        if decision := budget.after(step, total):
            total = decision.total
    # At step 33, 81 s in, the measured pace was mostly the slow steps' (3.8 s): the 19 s left allowed 4 more, and
    # the run would have ended at 85 s. Deciding after each of the last steps, the budget sees the pace recover.
    assert now[0] == pytest.approx(100.0, abs=2.0) and step > 49


def test_budget_options_are_checked_like_the_others():
    with pytest.raises(OptionError, match="--time-budget 30: give a duration with units, such as 90s, 30m, 2h or 1h30m"):
        train(TrainConfig(Path("d"), time_budget="30"))
    with pytest.raises(OptionError, match="--max-steps and --time-budget: give one or the other"):
        new_config({"data_dir": Path("d"), "max_steps": 5, "time_budget": "1h"})
    saved = TrainConfig(Path("d"), epochs=3, max_steps=17)
    assert resumed(saved, {"time_budget": "1h"}) == replace(saved, epochs=None, max_steps=2000, time_budget="1h")


def test_the_command_line_refuses_a_bad_budget_in_one_line(class_folder, tmp_path):
    r = CliRunner().invoke(app, ["train", str(class_folder), "--out", str(tmp_path / "r"), "--time-budget", "3 weeks"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "--time-budget 3 weeks: give a duration with units, such as 90s, 30m, 2h or 1h30m" in r.output
    assert not (tmp_path / "r").exists()
