"""Per-epoch training metrics through DVCLive, the writer DVC's experiment tools read.

A training stage logs one DVCLive step per epoch into its own directory (`dvclive/<stage>/`),
each metric named `<stage>/<name>`: `plots/metrics/<stage>/<name>.tsv` holds the curves and
`metrics.json` the latest values (`{"<stage>": {...}, "step": n}`), rewritten every epoch, so
`dvc exp show` shows a queued or running experiment's progress in columns such as
`finetune.val_macro_f1`. When training ends, `metrics.json` gets the stage's headline instead
(the selected epoch's values). No timestamps are logged: the files are a pure function of the
run, so `dvc repro` reproduces them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from snakeid.train import distributed

CURVES = ("train_loss", "val_loss", "val_macro_f1")  # one TSV each; dvc.yaml's plots read them


class EpochLog:
    """One training stage's DVCLive run. Only the main process writes (under torchrun)."""

    def __init__(self, directory: Path, stage: str):
        self._stage = stage
        self._live = None
        if distributed.is_main():
            from dvclive import Live

            # dvc.yaml declares the metrics and plots; no experiment saved from inside a stage.
            self._live = Live(str(directory), save_dvc_exp=False, dvcyaml=None, report=None)
            logging.getLogger("dvclive").setLevel(logging.WARNING)

    def epoch(self, row: Mapping[str, float]) -> None:
        """Log one finished epoch (`row["epoch"]` counts from 1) and refresh metrics.json."""
        if self._live is None:
            return
        self._live.step = int(row["epoch"])
        for name in CURVES:
            self._live.log_metric(f"{self._stage}/{name}", float(row[name]))
        self._live.make_summary()

    def finish(self, headline: Mapping[str, float]) -> None:
        """Write the stage's headline to metrics.json (replacing the last epoch's values)."""
        if self._live is None:
            return
        self._live.summary = {self._stage: {k: float(v) for k, v in headline.items()}}
        self._live.make_summary()
        self._live.end()
