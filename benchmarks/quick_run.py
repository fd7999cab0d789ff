"""The main job as a user runs it: `alignlab run` (the quick profile) from an empty run folder, timed
per stage, with the gold-reward gains it reached and their intervals. Writes
benchmarks/results/quick_run.json. Run on a quiet machine (nothing else on the cores):

    .venv/bin/python benchmarks/quick_run.py [--workdir /tmp/quick]
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def summarise(run: Path, wall: float) -> dict:
    stages = {}
    for name in json.loads((run / "run.json").read_text())["stages"]:
        done = json.loads((run / name / "COMPLETE").read_text())
        stages[name] = done.get("cost", {})
    ev = json.loads((run / "eval" / "eval.json").read_text())
    policies = {}
    for name, p in ev["policies"].items():
        policies[name] = {
            "gold": p["gold"]["mean"],
            "gold_interval": p["gold"]["t_interval"],
            "gain": None if not p["gain"] else p["gain"]["mean"],
            "gain_interval": None if not p["gain"] else p["gain"]["t_interval"],
            "gain_significant": None if not p["gain"] else p["gain"]["significant"],
            "win_rate": None if not p["win_rate"] else p["win_rate"]["win_rate"],
            "win_rate_wilson": None if not p["win_rate"] else p["win_rate"]["wilson"],
            "kl_k3": None if not p["kl"] else p["kl"]["k3"]["mean"],
        }
    return {"command": "alignlab run", "wall_s": round(wall, 1), "stages": stages, "policies": policies}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", default="/tmp/alignlab-quick")
    ap.add_argument("--from-existing", action="store_true", help="summarise an existing run folder without running")
    args = ap.parse_args()
    work = Path(args.workdir)
    run = work / "runs" / "quick"
    wall = 0.0
    if not args.from_existing:
        shutil.rmtree(work / "runs", ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "alignlab"), "run"], cwd=work, check=True)
        wall = time.perf_counter() - t0
    else:
        wall = sum(s.get("wall_s", 0) for s in summarise(run, 0)["stages"].values())
    out = Path(__file__).parent / "results" / "quick_run.json"
    out.write_text(json.dumps(summarise(run, wall), indent=1) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
