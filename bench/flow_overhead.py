"""What Prefect costs: a retrain flow vs the same steps called directly, in one run.

Generates 600 patches, then times (a) the retrain flow on Prefect's local API and (b)
the library steps it wraps, called one after the other with the same config on fresh
folders. Prints both and the overhead (goal: <= 10 s). The API server's start-up is
timed apart: it is paid once per process, not per run.

    .venv/bin/python bench/flow_overhead.py
    .venv/bin/python bench/flow_overhead.py --smoke   # 120 patches, 1 epoch
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from histo_cli.run_commands import quiet_prefect_defaults

quiet_prefect_defaults()  # as histo retrain runs: no telemetry, 90 s for the temporary API to start

from prefect import flow  # noqa: E402

from histo_flows.retrain import retrain  # noqa: E402
from histo_core import steps  # noqa: E402
from histo_core.config import SMOKE_WIDTH, GateConfig, RetrainConfig, StoreConfig, TrainConfig  # noqa: E402
from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout  # noqa: E402
from histo_core.layout import DatasetDir, ModelDir, RunDir  # noqa: E402


@flow
def _warm_up() -> None:
    """Starts the temporary API server and imports GX, so neither one-off cost lands on
    whichever of the two timings happens to run first."""
    import great_expectations  # noqa: F401


def _direct(config: RetrainConfig, root: Path) -> None:
    run = RunDir(root / "runs" / "direct")
    steps.record_config(run, config)
    dataset = steps.validate(config.data, DatasetDir(root / "dataset"), config.validation, root / "manifests")
    split = steps.split(dataset, config.split)
    model = steps.train(split, ModelDir(root / "model"), root / "cache", config.train)
    steps.evaluate(split, model, run, root / "cache", config.store, config.model_name, config.evaluation,
                   config.train.device)
    steps.promote(run, model, split, config.store, config.model_name, config.gate)
    steps.upload(run, split, model, config.store, "direct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="120 generated patches, 1 epoch, a narrow network")
    args = parser.parse_args()
    count, epochs, width = (120, 1, SMOKE_WIDTH) if args.smoke else (600, 2, TrainConfig().width)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_kaggle_layout(root / "data", SyntheticSpec(count=count, seed=3))

        def config(name: str) -> RetrainConfig:
            return RetrainConfig(data=str(root / "data"), store=StoreConfig(uri=str(root / name / "store")),
                                 workdir=str(root / name / "work"), train=TrainConfig(epochs=epochs, width=width),
                                 gate=GateConfig(auc_floor=0.0))

        start = time.perf_counter()
        _warm_up()
        server_s = time.perf_counter() - start

        start = time.perf_counter()
        retrain(config("flow"))
        flow_s = time.perf_counter() - start

        start = time.perf_counter()
        _direct(config("direct"), root / "direct")
        direct_s = time.perf_counter() - start

    print(f"API server start (once per process): {server_s:6.1f}s")
    print(f"retrain flow:                        {flow_s:6.1f}s")
    print(f"same steps called directly:          {direct_s:6.1f}s")
    print(f"overhead of the flow:                {flow_s - direct_s:6.1f}s   [goal <= 10 s]")


if __name__ == "__main__":
    main()
