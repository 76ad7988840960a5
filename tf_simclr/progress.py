"""A one-line progress report per training loop on stdout."""

from __future__ import annotations

import sys
import time
from typing import Mapping, Optional, TextIO


def format_duration(seconds: float) -> str:
  """Seconds -> 'H:MM:SS' (days shown as 'Nd H:MM:SS')."""
  seconds = max(0, int(round(seconds)))
  days, seconds = divmod(seconds, 86400)
  hours, seconds = divmod(seconds, 3600)
  minutes, seconds = divmod(seconds, 60)
  text = f'{hours}:{minutes:02d}:{seconds:02d}'
  return f'{days}d {text}' if days else text


class Progress:
  """Prints 'step s/total (p%) | images/s | ETA | loss ...' after each loop.

  Throughput counts the images of the steps run since the previous report (one
  image per example, views not counted) over the wall time between reports; the ETA
  uses the throughput measured since the first report, which leaves out tracing.
  """

  def __init__(self, total_steps: int, global_batch_size: int, start_step: int,
               stream: Optional[TextIO] = None) -> None:
    self.total_steps = total_steps
    self.global_batch_size = global_batch_size
    self.stream = stream or sys.stdout
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self._first_step: Optional[int] = None
    self._first_time = 0.0

  def report(self, step: int, metrics: Mapping[str, float]) -> str:
    """Prints and returns the progress line for reaching `step`."""
    now = time.perf_counter()
    elapsed = max(now - self._last_time, 1e-9)
    images_per_second = (step - self._last_step) * self.global_batch_size / elapsed
    if self._first_step is None:
      # The first loop includes tracing; estimate from it until there is more.
      steps_per_second = (step - self._last_step) / elapsed
      self._first_step, self._first_time = step, now
    elif step > self._first_step:
      steps_per_second = (step - self._first_step) / max(now - self._first_time, 1e-9)
    else:
      steps_per_second = 0.0
    remaining = self.total_steps - step
    eta = format_duration(remaining / steps_per_second) if steps_per_second > 0 else '?'
    shown = ' | '.join(f'{name} {value:.4f}' for name, value in metrics.items())
    line = (f'step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.1f}%)'
            f' | {images_per_second:.1f} images/s | ETA {eta}'
            + (f' | {shown}' if shown else ''))
    print(line, file=self.stream, flush=True)
    self._last_step, self._last_time = step, now
    return line
