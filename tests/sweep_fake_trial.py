"""A stand-in for train.py in the sweep tests: reads the trial's overrides, ends as the trial's value says.

train.label_smoothing picks the ending: 0.0 and 0.05 complete (value = 100 x optim.lr), 0.1 is a bad config
(exit 2), 0.2 crashes (exit 1), 0.3 is pruned (exit 0, summary says so), 0.4 is preempted once (exit 3, then
completes when started again in the same run directory), 0.5 finds its run directory in use once (exit 2 with
train.py's line, then completes), 0.6 ends 0 without a summary. A visiontrain-free script: starts in milliseconds.
"""

import json
import sys
import time
from pathlib import Path

args = dict(item.split("=", 1) for item in sys.argv[1:] if "=" in item)
run_dir = Path(args["run.dir"])
ending = float(args.get("train.label_smoothing", "0"))
value = 100 * float(args.get("optim.lr", "0.01"))
time.sleep(float(args.get("train.epochs", "0")) / 20)  # long enough for two workers to overlap
if ending == 0.1:
    print("error: config key 'train.label_smoothing' = 0.1 is refused here", file=sys.stderr)
    sys.exit(2)
if ending == 0.2:
    print("TrainingFailed: loss became non-finite at step 3", file=sys.stderr)
    sys.exit(1)
if ending == 0.4 and not (run_dir / "preempted_once").exists():
    (run_dir / "preempted_once").write_text("")
    sys.exit(3)
if ending == 0.5 and not (run_dir / "busy_once").exists():
    (run_dir / "busy_once").write_text("")
    print(f"error: run.dir={run_dir} is in use by another run (host node7, pid 4242; its lock ...)", file=sys.stderr)
    sys.exit(2)
if ending == 0.6:
    sys.exit(0)
summary = {"pruned": ending == 0.3, "epochs": 1, "final": {"top1": value, "loss": 1.0}}
(run_dir / "summary.json").write_text(json.dumps(summary))
