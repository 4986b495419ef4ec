"""What each recovery lever buys: the d512 student of benchmarks/prune.py healed on the same
number of tokens three ways.

    .venv/bin/python -m benchmarks.recovery [--tokens 8192] [--windows 40] [--k 128]

  online         the teacher's forward inside every step (benchmarks/prune.py's d512 row, read
                 from its result file: same machine and recipe, an earlier run)
  freeze-embed   the same, with `--freeze-embed`: the tied embedding (134M of 214M parameters)
                 gets no gradient and no Adam moments
  teacher-cache  `nano distill cache-teacher` labels the rows once (top-k sparse targets), then
                 the student trains on them with no teacher forward; the labelling's own cost is
                 reported beside it (paid once, reused by every student of this teacher)
Each: held-out perplexity (same windows as benchmarks/prune.py), wall and CPU seconds, training
tokens/s. Needs benchmarks/prune.py's work files (its d512 pruned checkpoint).
"""

import argparse
import time
from pathlib import Path

from benchmarks.harness.core import cpu_pressure
from benchmarks.prune import HEAL_LR, RECOVER, SEQ_LEN, _json
from benchmarks.workspace import Stages, result_path, work_dir, write_result
from nano.errors import NanoError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--k", type=int, default=128, help="teacher-cache ids per position")
    ap.add_argument("--json", type=Path, default=result_path("recovery"))
    args = ap.parse_args()

    from benchmarks.heldout import teacher_heldout

    teacher = teacher_heldout(args.windows).teacher
    prune_json = result_path("prune")
    base = _json(prune_json)
    if base["tokens"] != args.tokens or base["windows"] != args.windows:
        raise NanoError(f"{prune_json} used {base['tokens']} tokens / {base['windows']} windows; run "
                        f"`python -m benchmarks.prune --tokens {args.tokens} --windows {args.windows}` first")
    work = work_dir(f"prune-{args.tokens}")
    pruned = work / "d512-pruned"
    if not pruned.is_dir():
        raise NanoError(f"{pruned}: missing; run `python -m benchmarks.prune --tokens {args.tokens}` first")
    st = Stages(work)
    pressure_before = cpu_pressure()
    t0 = time.perf_counter()
    online = base["rows"]["d512"]
    rows = {"online": {"perplexity": online["perplexity"], "wall_s": online["recover_wall_s"],
                       "cpu_s": online["recover_cpu_s"], "from": str(prune_json.relative_to(prune_json.parents[2]))}}
    run = work / "distill-d512-freeze"
    cost = st.run("distill-d512-freeze", run / "student", "distill", "--init", pruned, "--teacher", teacher,
                  "--tokens", args.tokens, *HEAL_LR, *RECOVER, "--freeze-embed", "--out", run, "--resume")
    rows["freeze-embed"] = {"perplexity": st.perplexity("d512-freeze", run / "student", args.windows), **cost}
    cache = work / f"teacher-cache-k{args.k}"
    label = st.run(f"cache-teacher-k{args.k}", cache / "manifest.json", "distill", "cache-teacher", "--out", cache,
                   "--teacher", teacher, "--seq-len", SEQ_LEN, "--k", args.k, "--rows", -(-args.tokens // SEQ_LEN))
    run = work / f"distill-d512-cache-k{args.k}"
    cost = st.run(f"distill-d512-cache-k{args.k}", run / "student", "distill", "--init", pruned, "--teacher", cache,
                  "--tokens", args.tokens, *HEAL_LR, *RECOVER, "--out", run, "--resume")
    rows["teacher-cache"] = {"perplexity": st.perplexity(f"d512-cache-k{args.k}", run / "student", args.windows),
                             **cost, "labelling": label, "k": args.k}
    for r in rows.values():
        r["tokens_per_s"] = args.tokens / r["wall_s"]
        r["cpu_vs_online"] = r["cpu_s"] / rows["online"]["cpu_s"]
    result = {"tokens": args.tokens, "windows": args.windows, "student": "d512 (benchmarks/prune.py)",
              "seconds": time.perf_counter() - t0, "rows": rows}
    write_result(args.json, result, pressure_before=pressure_before)
    for name, r in rows.items():
        print(f"{name:<15} ppl {r['perplexity']:8.2f}  wall {r['wall_s']:6.0f} s  cpu {r['cpu_s']:6.0f} s  "
              f"{r['tokens_per_s']:5.1f} tok/s")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
