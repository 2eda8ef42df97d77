"""The course's shared model: trained once, reused by notebooks 04, 05, 08, 09 and the explorer.

    from ddpm_lib.shared_run import shared_run
    run_dir = shared_run(quick=QUICK)        # runs/learner (or runs/learner_quick), trained if missing
    model, cfg, class_names, ckpt = load_run(run_dir)

A learner who presses Run All in notebook 04 trains the ``learner`` preset into
``runs/learner`` (about a minute and a half on 2 CPU cores, with a progress line every few
seconds); notebooks 05, 08 and 09 and the explorer then find it and load it in a second.
CI's quick mode (``QUICK=True``) shares ``runs/learner_quick`` the same way, trained with the
``digits_quick`` preset (about 30 s). A run that was interrupted resumes from its snapshot.
What the learner preset reaches, and in how long, is measured by ``scripts/bench.py`` (``ttq``).
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import load_config

SHARED = {False: ("learner", "learner"), True: ("learner_quick", "digits_quick")}  # quick: (folder, preset)


def shared_run_dir(quick: bool = False, runs: str | Path = "../runs") -> Path:
    """Where the shared model of this mode lives: ``runs/learner`` or ``runs/learner_quick``."""
    return Path(runs) / SHARED[bool(quick)][0]


def shared_run(quick: bool = False, runs: str | Path = "../runs", device: str = "cpu", chunk: int | None = None,
               on_chunk=None, overrides: tuple[str, ...] = ()) -> Path:
    """The shared model's run directory, trained first if it has no ``ema.pt``.

    ``runs`` is the folder of runs (``../runs`` from ``notebooks/``). Training uses the mode's
    preset on ``device``; with ``chunk`` it stops every ``chunk`` steps and calls
    ``on_chunk(run_dir)`` (notebook 04 redraws its live loss plot there), else it prints a
    progress line every few seconds. ``overrides`` (``section.key=value``) change the preset
    (the tests shrink it). Returns the run directory.
    """
    from .train import planned_steps_of, train

    folder, preset = SHARED[bool(quick)]
    run_dir = Path(runs) / folder
    if (run_dir / "ema.pt").exists():
        print(f"[shared] using the shared model in {run_dir} (preset {preset}): trained once, reused by "
              f"notebooks 04, 05, 08, 09 and the explorer; delete the folder to train it again")
        return run_dir
    cfg = load_config(preset, [f"train.device={device}", *overrides])
    print(f"[shared] no model in {run_dir} yet: training the {preset} preset there once "
          f"(notebooks 04, 05, 08, 09 and the explorer reuse it)", flush=True)
    started = time.time()
    if chunk:
        total = planned_steps_of(cfg)
        for stop in range(chunk, total + chunk, chunk):
            train(cfg, run_dir, progress=False, stop_after=min(stop, total))
            if on_chunk is not None:
                on_chunk(run_dir)
    else:
        train(cfg, run_dir, progress=True)
    print(f"[shared] trained {run_dir} in {time.time() - started:.0f} s", flush=True)
    return run_dir
