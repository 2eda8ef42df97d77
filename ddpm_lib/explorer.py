"""The sample explorer: an ipywidgets UI over trained runs.

    from ddpm_lib.explorer import Explorer
    Explorer("runs")            # in a notebook cell: shows the UI

Pick a run and its weights, a class (from the dropdown, or typed as a prompt such as
"digit seven", see :mod:`ddpm_lib.prompt`), the guidance scale, sampler, steps, seed
and number of images, then press **Generate**. The grid appears under a progress bar.
The **trajectory** scrubber walks one sample back through its denoising: x_t, the
image entering step t, beside the network's prediction of x_0 at that step
(Ho et al. 2020, eq. 15; Song et al. 2021, eq. 12). **Save PNG** writes the grid to
``RUN/explorer/``.

Bad input never raises into the kernel: every action reports problems in the message
line of the UI. Class names come from a run's checkpoint and the prompt from the user, so
neither is trusted: the message line shows them as escaped text, and a saved file's name
keeps only safe characters of the class name. The same object is scriptable
(``explorer.generate()``, widget values set from code), which is how the tests drive it.
"""

from __future__ import annotations

import html
import time
import unicodedata
from pathlib import Path

import torch

from .checkpoint import WEIGHTS, atomic_write_bytes, available_weights, load_run
from .config import check_seed
from .diffusion import ddim_timesteps, sample
from .errors import DDPMError
from .prompt import class_from_prompt
from .schedules import schedule_of
from .viz import as_uint8, image_grid, png_bytes

MAX_FRAMES = 60  # trajectory frames kept per generation (evenly spaced steps)
MAX_GUIDANCE = 10.0  # the guidance slider's range is [0, MAX_GUIDANCE]
MAX_IMAGES = 64  # images per generation
MAX_NAME_CHARS = 48  # of a class name in a saved file's name: 4 bytes each stays under 255


def find_runs(root: str | Path = "runs") -> list[Path]:
    """Run directories under ``root`` (or ``root`` itself) that hold weights, newest first."""
    root = Path(root)
    candidates = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    runs = [p for p in candidates if available_weights(p)]
    return sorted(runs, key=lambda p: max((p / f).stat().st_mtime for f in ("ema.pt", "snapshot.pt") if (p / f).exists()),
                  reverse=True)


def _scale_for(img_size: int, target: int = 64) -> int:
    return max(1, target // img_size)


def safe_file_name(text: str) -> str:
    """``text`` made safe inside a file name: letters (of any script, with their accents),
    digits, ``-``, ``_`` and ``.`` are kept, anything else (``/``, ``\\``, NUL, spaces, ...)
    becomes ``_``; at most :data:`MAX_NAME_CHARS` characters, no leading dot, never empty."""
    text = unicodedata.normalize("NFC", text)
    safe = "".join(ch if ch in "-_." or unicodedata.category(ch)[0] in "LMN" else "_" for ch in text)
    return safe[:MAX_NAME_CHARS].lstrip(".") or "class"


def _check_range(what: str, value, low: float, high: float, kind: str = "a number") -> None:
    """A one-line :class:`DDPMError` unless ``low <= value <= high`` (NaN and infinities are not)."""
    if not low <= value <= high:  # False for NaN too
        raise DDPMError(f"{what} must be {kind} from {low:g} to {high:g}, got {value!r}")


class Explorer:
    """The explorer's widgets and actions. ``runs``: a run directory or a folder of runs."""

    def __init__(self, runs: str | Path = "runs", device: str = "cpu"):
        import ipywidgets as w

        self.device = torch.device(device)
        self.model = self.cfg = self.class_names = None
        self.result = None  # the last generation: images, labels, trajectory, settings
        self.last_saved: Path | None = None
        self.status = ""
        run_dirs = find_runs(runs)

        layout = w.Layout(width="340px")
        style = {"description_width": "90px"}
        self.run = w.Dropdown(options=[(str(p), str(p)) for p in run_dirs], description="run", layout=layout, style=style)
        self.weights = w.Dropdown(description="weights", layout=layout, style=style)
        self.class_ = w.Dropdown(description="class", layout=layout, style=style)
        self.prompt = w.Text(placeholder='or type: "digit seven"', description="prompt", layout=layout, style=style,
                             continuous_update=False)
        self.guidance = w.FloatSlider(value=2.0, min=0.0, max=MAX_GUIDANCE, step=0.5, description="guidance s",
                                      layout=layout, style=style)
        self.sampler = w.ToggleButtons(options=[("DDIM", "ddim"), ("DDPM", "ddpm")], description="sampler", style=style)
        self.steps = w.IntSlider(value=50, min=1, max=1000, description="DDIM steps", layout=layout, style=style)
        self.eta = w.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.1, description="DDIM eta", layout=layout, style=style)
        self.seed = w.IntText(value=0, description="seed", layout=layout, style=style)
        self.count = w.IntSlider(value=16, min=1, max=MAX_IMAGES, description="images", layout=layout, style=style)
        self.generate_button = w.Button(description="Generate", button_style="primary", icon="play")
        self.save_button = w.Button(description="Save PNG", icon="save", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="340px"))
        self.message = w.HTML(value="")
        self.grid = w.Image(format="png")
        self.which = w.IntSlider(value=0, min=0, max=0, description="sample", layout=layout, style=style)
        self.frame = w.IntSlider(value=0, min=0, max=0, description="step", layout=layout, style=style,
                                 readout=False)
        self.frame_label = w.Label("")
        self.trajectory = w.Image(format="png")

        self.run.observe(lambda _: self._safely(self.load), names="value")
        self._reloading = False
        self.weights.observe(lambda _: self._reloading or self._safely(self.load), names="value")
        self.prompt.observe(lambda _: self._safely(self.apply_prompt), names="value")
        self.sampler.observe(lambda _: self._sync_sampler(), names="value")
        self.generate_button.on_click(lambda _: self._safely(self.generate))
        self.save_button.on_click(lambda _: self._safely(self.save))
        self.which.observe(lambda _: self._safely(self.show_frame), names="value")
        self.frame.observe(lambda _: self._safely(self.show_frame), names="value")

        controls = w.VBox([self.run, self.weights, self.class_, self.prompt, self.guidance, self.sampler, self.steps,
                           self.eta, self.seed, self.count, w.HBox([self.generate_button, self.save_button]),
                           self.progress, self.message])
        scrubber = w.VBox([w.HTML("<b>denoising trajectory</b>: x<sub>t</sub> (left) and predicted x<sub>0</sub> (right)"),
                           self.which, w.HBox([self.frame, self.frame_label]), self.trajectory])
        self.ui = w.HBox([controls, w.VBox([self.grid, scrubber])])
        for widget, name in ((self.class_, "class"), (self.generate_button, "generate"), (self.grid, "grid"),
                             (self.message, "message"), (self.save_button, "save"), (self.prompt, "prompt")):
            widget.add_class(f"ddpm-{name}")  # stable hooks for the browser test and custom CSS
        if run_dirs:
            self._safely(self.load)
        else:
            self._say(f"no trained run under {runs}: train one with python -m ddpm_lib.train --config digits", error=True)

    # ---- display --------------------------------------------------------------------------

    def _ipython_display_(self):
        from IPython.display import display

        display(self.ui)

    def _say(self, text: str, error: bool = False) -> None:
        colour = "#b00020" if error else "#1b5e20"
        self.status = text  # the message as plain text
        # text holds class names and prompts, which are not trusted: never markup
        self.message.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    def _safely(self, action) -> None:
        """Run a UI action; report any failure in the message line instead of raising."""
        try:
            action()
        except DDPMError as err:
            self._say(str(err), error=True)
        except Exception as err:  # never let a widget callback take the kernel down
            self._say(f"{type(err).__name__}: {err}", error=True)

    def _sync_sampler(self) -> None:
        self.steps.disabled = self.eta.disabled = self.sampler.value == "ddpm"

    # ---- actions ----------------------------------------------------------------------------

    def load(self) -> None:
        """Load the chosen run's weights and fill the class list and step range from it."""
        run_dir = self.run.value
        if run_dir is None:
            raise DDPMError("choose a run")
        have = available_weights(run_dir)
        if [v for _, v in self.weights.options] != have or self.weights.value not in have:
            self._reloading = True  # the observer must not load while the options change
            try:
                self.weights.options = [(WEIGHTS[k], k) for k in have]
                self.weights.value = have[0]
            finally:
                self._reloading = False
        model, cfg, names, ckpt = load_run(run_dir, self.weights.value)
        self.model, self.cfg, self.class_names = model.to(self.device), cfg, names
        self.class_.options = [(name, i) for i, name in enumerate(names)]
        self.steps.max = cfg.diffusion.timesteps
        self.steps.value = min(cfg.sample.steps, cfg.diffusion.timesteps)
        self.guidance.value, self.eta.value = cfg.sample.guidance_scale, cfg.sample.eta
        self._say(f"loaded {run_dir} ({self.weights.value}, step {ckpt['step']}, {cfg.data.dataset} "
                  f"{cfg.data.img_size}px, {len(names)} classes)")

    def apply_prompt(self) -> None:
        """Select the class named by the prompt text (nothing happens for an empty prompt)."""
        if not self.prompt.value.strip() or self.class_names is None:
            return
        self.class_.value = class_from_prompt(self.prompt.value, self.class_names)
        self._say(f"prompt {self.prompt.value!r} -> class {self.class_names[self.class_.value]}")

    def settings(self) -> dict:
        """The current widget values, checked; raises :class:`DDPMError` naming a bad one."""
        if self.model is None:
            raise DDPMError("no run loaded; pick a run with weights")
        if self.class_.value is None:
            raise DDPMError(f"choose a class: one of {', '.join(self.class_names)}")
        check_seed(self.seed.value, "seed")
        _check_range("number of images", self.count.value, 1, MAX_IMAGES, "a whole number")
        _check_range("guidance scale", self.guidance.value, 0, MAX_GUIDANCE)
        ddpm = self.sampler.value == "ddpm"
        if not ddpm:  # the widgets' ranges can be changed from code
            _check_range("DDIM steps", self.steps.value, 1, self.cfg.diffusion.timesteps, "a whole number")
            _check_range("DDIM eta", self.eta.value, 0, 1)
        return {"class": int(self.class_.value), "sampler": self.sampler.value,
                "steps": self.cfg.diffusion.timesteps if ddpm else int(self.steps.value),
                "eta": float(self.eta.value), "guidance": float(self.guidance.value),
                "seed": int(self.seed.value), "count": int(self.count.value)}

    def _trajectory_steps(self, s: dict) -> list[int]:
        ts = list(range(self.cfg.diffusion.timesteps - 1, -1, -1)) if s["sampler"] == "ddpm" \
            else ddim_timesteps(self.cfg.diffusion.timesteps, s["steps"])
        stride = max(1, -(-len(ts) // MAX_FRAMES))
        return sorted(set(ts[::stride]) | {ts[-1]}, reverse=True)

    def generate(self) -> None:
        """Sample the grid for the current settings, with the progress bar and trajectory."""
        s = self.settings()
        self.generate_button.disabled = True
        self.progress.value, self.progress.max = 0, s["steps"]
        self._say(f"generating {s['count']} x {self.class_names[s['class']]} ...")

        def tick(steps):
            for i in steps:
                yield i
                self.progress.value = i + 1

        try:
            started = time.time()
            schedule = schedule_of(self.cfg)
            labels = torch.full((s["count"],), s["class"], dtype=torch.long, device=self.device)
            generator = torch.Generator(self.device).manual_seed(s["seed"])
            shape = (self.model.in_channels, self.cfg.data.img_size, self.cfg.data.img_size)
            result = sample(self.model, schedule, labels, shape, self.model.null_class, sampler=s["sampler"],
                            steps=s["steps"], eta=s["eta"], guidance_scale=s["guidance"], generator=generator,
                            record=self._trajectory_steps(s), progress=tick, prediction=self.cfg.diffusion.prediction)
            seconds = time.time() - started
        finally:
            self.generate_button.disabled = False
        images = as_uint8(result.x.cpu())
        self.result = {"images": images, "steps": result.steps, "xt": result.xt, "x0": result.x0,
                       "settings": s, "seconds": seconds}
        scale = _scale_for(self.cfg.data.img_size)
        self.grid.value = png_bytes(image_grid(images, nrow=min(8, s["count"]), scale=scale))
        self.which.max, self.which.value = s["count"] - 1, min(self.which.value, s["count"] - 1)
        self.frame.max = len(result.steps) - 1
        if self.frame.value == self.frame.max:
            self.show_frame()
        else:
            self.frame.value = self.frame.max  # the end of the trajectory: the final image
        self.save_button.disabled = False
        how = f"DDIM {s['steps']} steps, eta {s['eta']}" if s["sampler"] == "ddim" else f"DDPM {s['steps']} steps"
        self._say(f"{s['count']} x {self.class_names[s['class']]} ({how}, guidance {s['guidance']}, "
                  f"seed {s['seed']}) in {seconds:.1f}s")

    def show_frame(self) -> None:
        """Show x_t and predicted x_0 of the chosen sample at the chosen trajectory step."""
        if not self.result or not self.result["steps"]:
            return
        i, k = self.which.value, min(self.frame.value, len(self.result["steps"]) - 1)
        pair = torch.stack([self.result["xt"][k][i].clamp(-1, 1), self.result["x0"][k][i]])
        self.trajectory.value = png_bytes(image_grid(pair, nrow=2, scale=_scale_for(self.cfg.data.img_size, 96)))
        self.frame_label.value = f"t = {self.result['steps'][k]}"

    def save(self) -> Path:
        """Write the last grid to ``RUN/explorer/<class>_<sampler><steps>_s<guidance>_seed<seed>.png``,
        ``<class>`` made safe by :func:`safe_file_name`."""
        if not self.result:
            raise DDPMError("nothing to save yet: press Generate first")
        s = self.result["settings"]
        name = (f"{safe_file_name(self.class_names[s['class']])}_{s['sampler']}{s['steps']}_s{s['guidance']:g}"
                f"_seed{s['seed']}.png")
        folder = Path(self.run.value) / "explorer"
        path = folder / name
        if path.resolve().parent != folder.resolve():  # defence in depth: the name is already safe
            raise DDPMError(f"refusing to save {name!r}: it would land outside {folder}")
        atomic_write_bytes(self.grid.value, path)
        self.last_saved = path
        self._say(f"saved {path}")
        return path
