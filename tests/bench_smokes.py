"""Run benches' ``--smoke`` modes one after the other in this one interpreter, each as
``python bench/NAME.py --smoke`` runs it: its own working folder, ``sys.argv``, ``__main__``
and ``bench/`` first on ``sys.path``, and the environment, folder and torch's thread count
put back afterwards.

Why one interpreter: each bench's own process spent about 10 s of CPU importing torch,
Prefect and GX before seconds of work (13 benches: a quarter of their suite time on a
2-core machine). What a bench starts itself (children, servers) is still its own process.

    python tests/bench_smokes.py OUT NAME.py [NAME.py ...]

writes ``OUT/NAME.json``: ``{"exit": code, "stdout": ..., "stderr": ...}``, the bench's
printed output and exit status as a shell would have seen them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _exit_code(stop: SystemExit, err: io.StringIO) -> int:
    if stop.code is None or isinstance(stop.code, int):
        return stop.code or 0
    print(stop.code, file=err)  # SystemExit("message"): the interpreter prints it and exits 1
    return 1


def run_smoke(name: str, folder: Path) -> dict[str, object]:
    import torch  # every bench imports it; its thread count is part of what is put back

    environ, path, argv, cwd = dict(os.environ), list(sys.path), list(sys.argv), os.getcwd()
    threads = torch.get_num_threads()
    out, err, code = io.StringIO(), io.StringIO(), 0
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.chdir(folder)
        sys.argv = [str(BENCH / name), "--smoke"]
        sys.path.insert(0, str(BENCH))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(BENCH / name), run_name="__main__")
            except SystemExit as stop:
                code = _exit_code(stop, err)
            except BaseException:  # noqa: BLE001 - reported as the interpreter would, exit 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(cwd)
        sys.argv, sys.path[:] = argv, path
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
    return {"exit": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main() -> None:
    out, names = Path(sys.argv[1]), sys.argv[2:]
    for name in names:
        start = time.perf_counter()
        result = run_smoke(name, out / "cwd" / name)
        (out / f"{name}.json").write_text(json.dumps(result))
        print(f"{name}: exit {result['exit']} in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
