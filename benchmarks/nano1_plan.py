"""Compile one full-size distillation step (nano1 student, Gemma 3 270M teacher) on an 8-device
mesh of forced host devices, without allocating it, and report per-device memory.

    .venv/bin/python -m benchmarks.nano1_plan [--student nano1] [--teacher gemma3_270m|gemma3_4b|...]
        [--remat none|block|dots] [--mesh-data 1 --mesh-fsdp 8] [--batch-size 8 --seq-len 2048 --grad-accum 1]

A teacher with a larger vocabulary (Gemma 3 4B/12B/27B) is scored over the student's ids, as in
training (distill.targets.shared_vocab_logits).

XLA_FLAGS is set here before JAX starts; on a real accelerator host run it without
--force-host-devices to plan for the devices that are actually there.
"""

import argparse
import os
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="nano1")
    ap.add_argument("--teacher", default="gemma3_270m", help="teacher preset (shapes only)")
    ap.add_argument("--mesh-data", type=int, default=1)
    ap.add_argument("--mesh-fsdp", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--remat", default="none", help="what each student block keeps for the backward pass")
    ap.add_argument("--force-host-devices", type=int, default=8)
    ap.add_argument("--json", default=None, help="default: benchmarks/results/nano1_plan.json")
    args = ap.parse_args()
    if args.force_host_devices and "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.force_host_devices}"

    from distill.plan import plan_step
    from distill.train import TrainConfig
    from nano.config import get_preset

    cfg = TrainConfig(student=args.student, teacher=args.teacher, tokens=10**9, seq_len=args.seq_len,
                      batch_size=args.batch_size, grad_accum=args.grad_accum, mesh_data=args.mesh_data,
                      mesh_fsdp=args.mesh_fsdp, remat=args.remat,
                      compute_dtype="bfloat16")  # as on the accelerators it plans for
    plan = plan_step(cfg, teacher_config=get_preset(args.teacher))
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    print(f"{args.student} ({plan.student_params / 1e9:.3f}B params) distilled from {args.teacher} "
          f"({plan.teacher_params / 1e6:.0f}M, bf16), batch {args.batch_size} x {args.seq_len} tokens, "
          f"grad accum {args.grad_accum}, remat {args.remat}, bf16 compute / f32 master weights + AdamW")
    print(f"mesh {plan.mesh} on {plan.devices} devices; compiled in {plan.compile_seconds:.0f} s")
    print(f"  student params + optimizer state (all devices): {gib(plan.state_bytes)}")
    print(f"  per device: arguments {gib(plan.per_device_argument_bytes)}, temporaries {gib(plan.per_device_temp_bytes)}, "
          f"peak {gib(plan.per_device_peak_bytes)}")
    from benchmarks.workspace import result_path, write_result

    path = write_result(args.json or result_path("nano1_plan"), plan.as_dict() | {"args": vars(args)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
