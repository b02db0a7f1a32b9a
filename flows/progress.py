"""Terminal progress for the console script: tqdm bars fed by the library's on_progress callbacks."""

from __future__ import annotations

import sys


def progress_bar(label: str):
    """An on_progress callback drawing tqdm bars on stderr (library code stays UI-free).

    Accepts ``(done, total)`` and the Materials Project pull's ``(stage, done, total)``; each stage
    gets its own bar.
    """
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def on_progress(*args) -> None:
        stage, (done, total) = (args[0], args[1:]) if len(args) == 3 else ("", args)
        bar = bars.get(stage)
        if bar is None:
            desc = f"{label} {stage}".strip()
            bar = bars[stage] = tqdm(total=total, desc=desc, unit="row", file=sys.stderr, leave=False)
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            bars.pop(stage, None)

    return on_progress
