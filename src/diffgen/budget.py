"""How long a run takes: the expected duration of its steps, and a time budget that sets their number.

`Pace` says once how long the rest of a run should take, from the pace of its first steps.

`Budget` (`diffgen train --time-budget 30m`) chooses the last step so that the run ends within a
wall-clock budget, counted from the start of `train`. It times every iteration of the loop but the
first (which warms up: allocations, kernel choices) and sorts them by what else they did: plain steps,
steps that wrote a checkpoint, steps that drew a sample grid. The predicted end of a run that stops at
step N is then

    elapsed + (N - step) * plain + grids(N) * grid_extra + saves(N) * save_extra

where grids(N) and saves(N) count the grids and checkpoints still to come, the final ones included, and
the extras are what such an iteration took beyond a plain one. Until a grid has been timed its extra
is a guess: `grid_seconds` (the trainer times one denoising pass of its images before the first step,
times the sampling steps) as a number of plain steps, fixed over the first SAY_STEPS timed steps, so that
the guess slows down with the steps when the machine gets busier; or `grid_steps` plain steps. A
checkpoint's extra is 0 until one is timed. The budget takes the largest N whose predicted end is
within it (but not one before SAY_STEPS steps are timed, so that a first guess cannot end the run), and
decides again as it learns: after 1, 2, 4, 8 and then every 16 timed steps (so the first
decision comes two steps in and the later ones follow the pace as it settles or drifts), after each
timed grid or checkpoint, and after each of the last FINAL_STEPS steps before the chosen end (a busy
spell that set an early end must not end the run before the pace has recovered). The plain pace is the mean of the later half of the
plain steps timed so far. Under torchrun each rank measures its own numbers; every decision takes the
largest of each over the ranks (`agree`), so all ranks compute the same N. Torch-free.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from diffgen.events import Estimate

UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
DURATION_RULE = "give a duration with units, such as 90s, 30m, 2h or 1h30m"


def parse_duration(text: str) -> float:
    """Seconds in '90s', '30m', '2h', '1h30m' or '1.5h' (any case, no spaces); ValueError for anything else,
    a bare number included (minutes or seconds?), and for no time at all."""
    match = DURATION.fullmatch(text.strip().lower())
    if not match or not any(match.groups()):
        raise ValueError(f"{text!r}: {DURATION_RULE}")
    seconds = sum(float(value) * UNITS[unit] for value, unit in zip(match.groups(), UNITS) if value)
    if seconds <= 0:
        raise ValueError(f"{text!r}: the budget must be longer than 0")
    return seconds


class Pace:
    """The time per step, measured from the end of the first step (which warms up), and one estimate of
    the time the remaining steps take: after ESTIMATE_STEPS steps, or sooner when they are slow."""

    ESTIMATE_STEPS, ESTIMATE_SECONDS = 10, 10.0

    def __init__(self, start: int, total: int, clock: Callable[[], float] = time.perf_counter):
        self.start, self.total, self.clock = start, total, clock
        self.t0 = clock()
        self.warm: float | None = None  # when the first step ended
        self.said = False

    def after(self, step: int) -> Estimate | None:
        """Call after each step: the estimate, once, else None."""
        now = self.clock()
        if step == self.start + 1:
            self.warm = now
            return None
        timed = step - self.start - 1
        if self.said or self.warm is None or step >= self.total:
            return None
        if timed < self.ESTIMATE_STEPS - 1 and now - self.warm < self.ESTIMATE_SECONDS:
            return None
        self.said = True
        return Estimate((now - self.warm) / timed * (self.total - step), step)


def multiples(every: int, after: int, upto: int) -> int:
    """How many multiples of `every` lie in (after, upto]."""
    return max(0, upto // every - after // every)


@dataclass(frozen=True)
class Costs:
    """Seconds, agreed over the ranks: spent so far, a plain step, and what a grid or a checkpoint adds."""

    elapsed: float
    plain: float
    grid_extra: float
    save_extra: float


@dataclass(frozen=True)
class Decision:
    total: int  # the last step
    seconds_left: float  # the predicted time to the end, final checkpoint and grid included
    estimate: Estimate | None  # to show, the first time a decision rests on enough steps


class Budget:
    """Fits the last step of a run to a wall-clock budget; see the module's docstring."""

    SAY_STEPS, SAY_SECONDS = 8, 10.0  # the estimate is shown once this many steps, or seconds of steps, are timed
    FINAL_STEPS = 16  # decide after each of a run's last steps, so that a run cut short by a busy spell can grow again

    def __init__(self, seconds: float, start: int, *, sample_every: int, save_every: int, t0: float,
                 grid_seconds: float | None = None, grid_steps: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter, agree: Callable[[float], float] = lambda value: value):
        self.seconds, self.start, self.t0, self.clock, self.agree = seconds, start, t0, clock, agree
        self.sample_every, self.save_every = sample_every, save_every
        self.grid_seconds, self.grid_steps = grid_seconds, grid_steps  # the guesses of a grid's extra time
        self.last: float | None = None  # when the previous iteration ended
        self.warm: float | None = None  # when the first (untimed) iteration ended
        self.times: dict[tuple[bool, bool], list[float]] = {(g, s): [] for g in (False, True) for s in (False, True)}
        self.said = False

    def kind(self, step: int) -> tuple[bool, bool]:
        """(drew a grid, wrote a checkpoint) at this step, short of the final one."""
        return step % self.sample_every == 0, step % self.save_every == 0

    def after(self, step: int, total: int) -> Decision | None:
        """Call at the end of each iteration, after its checkpoint and grid: a decision, or None when this
        step is not one to decide at (or is the last)."""
        now = self.clock()
        timed = self.last is not None
        if timed:
            self.times[self.kind(step)].append(now - self.last)
        else:
            self.warm = now
        self.last = now
        count = step - self.start - 1  # iterations timed
        due = count in (1, 2, 4, 8) or count % 16 == 0 or any(self.kind(step)) or total - step <= self.FINAL_STEPS
        if not timed or step >= total or not due:
            return None
        return self.decide(step, self.costs(now, count))

    def costs(self, now: float, count: int) -> Costs:
        mean = lambda values: sum(values) / len(values) if values else None
        plain_times = self.times[False, False]
        plain = mean(plain_times[len(plain_times) // 2:])
        if plain is None:  # every iteration so far drew a grid or saved: their mean stands for all
            plain = mean([t for times in self.times.values() for t in times])
        if self.grid_seconds is not None and count <= self.SAY_STEPS:  # the guess in steps of the first pace
            self.grid_steps = self.grid_seconds / max(mean(plain_times) or plain, 1e-9)
        save = mean(self.times[False, True])
        save_extra = 0.0 if save is None else max(0.0, save - plain)
        grid, both = mean(self.times[True, False]), mean(self.times[True, True])
        grid_extra = (grid - plain if grid is not None else both - plain - save_extra if both is not None
                      else self.grid_steps * plain)
        return Costs(*(self.agree(value) for value in (now - self.t0, plain, max(0.0, grid_extra), save_extra)))

    def seconds_to(self, last: int, step: int, c: Costs) -> float:
        """The predicted time from `step` to the end of a run whose last step is `last`."""
        grids = multiples(self.sample_every, step, last - 1) + 1  # the final grid and checkpoint are always made
        saves = multiples(self.save_every, step, last - 1) + 1
        return (last - step) * c.plain + grids * c.grid_extra + saves * c.save_extra

    def decide(self, step: int, c: Costs) -> Decision:
        left = self.seconds - c.elapsed
        low, high = step + 1, step + 2 + int(max(left, 0.0) / max(c.plain, 1e-6))
        while low < high:  # the largest last step that ends in time (at least the next one)
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.seconds_to(mid, step, c) <= left else (low, mid - 1)
        if step - self.start - 1 < self.SAY_STEPS:  # not yet: a guess from so few steps must not end the run
            low = max(low, self.start + self.SAY_STEPS + 2)
        seconds = self.seconds_to(low, step, c)
        estimate = None
        if not self.said and (step - self.start - 1 >= self.SAY_STEPS or self.last - self.warm >= self.SAY_SECONDS):
            self.said = True
            estimate = Estimate(seconds, step, total=low, budget=self.seconds)
        return Decision(low, seconds, estimate)
