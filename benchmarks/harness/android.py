"""The same .litertlm on an Android phone over adb, through LiteRT-LM's `litert_lm_main --benchmark`.

Set-up (once):
  1. Install Android platform-tools so `adb` is on PATH (Debian: `apt-get install adb`; or the SDK's
     platform-tools zip from developer.android.com).
  2. Phone: Settings > About > tap "Build number" 7 times, then Developer options > USB debugging;
     plug it in and accept the key prompt. Or start an emulator (`emulator -avd <name>`; an
     x86_64 image needs an x86_64 binary). `adb devices` must list it as "device".
  3. Get `litert_lm_main` for the phone's ABI: a LiteRT-LM GitHub release asset, or build it:
     `bazel build --config=android_arm64 //runtime/engine:litert_lm_main` in LiteRT-LM
     (NDK r28b+, ANDROID_NDK_HOME set). Pass its path as `binary` or set NANO_LITERT_LM_MAIN.
  4. Several devices: pass `serial` (or set ANDROID_SERIAL).
The model and binary go to /data/local/tmp/nano-bench/ and stay there (re-pushed each run).
"""

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nano.errors import NanoError

REMOTE = "/data/local/tmp/nano-bench"
SETUP = "install platform-tools (adb) / connect a device with USB debugging / start an emulator"


def adb_path() -> str:
    adb = shutil.which("adb")
    if adb is None:
        raise NanoError(f"no adb device: adb is not on PATH; {SETUP}")
    return adb


def adb_devices(adb: str) -> list[str]:
    """Serials that `adb devices` lists as ready ("device", not "unauthorized"/"offline")."""
    try:
        out = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise NanoError(f"no adb device: `adb devices` failed ({type(e).__name__}); {SETUP}") from None
    return [ln.split()[0] for ln in out.splitlines()[1:] if ln.split()[1:2] == ["device"]]


def pick_device(serial: str | None = None) -> tuple[str, str]:
    """(adb, serial) of the phone to use, or the NanoError that says what to set up."""
    adb = adb_path()
    devices = adb_devices(adb)
    serial = serial or os.environ.get("ANDROID_SERIAL")
    if not devices:
        raise NanoError(f"no adb device attached (`adb devices` lists none ready); {SETUP}")
    if serial is None and len(devices) > 1:
        raise NanoError(f"{len(devices)} adb devices ({', '.join(devices)}); pick one with serial= or ANDROID_SERIAL")
    if serial is not None and serial not in devices:
        raise NanoError(f"adb device {serial!r} not attached (have {', '.join(devices)}); check `adb devices`")
    return adb, serial or devices[0]


def phone_binary(binary: str | Path | None = None) -> Path:
    """The litert_lm_main built for the phone: `binary` or $NANO_LITERT_LM_MAIN."""
    binary = binary or os.environ.get("NANO_LITERT_LM_MAIN")
    if not binary or not Path(binary).is_file():
        raise NanoError("android: no litert_lm_main binary for the phone; build or download it and pass "
                        "binary= or set NANO_LITERT_LM_MAIN (see benchmarks/harness/android.py)")
    return Path(binary)


def parse_litert_lm(text: str) -> dict[str, float]:
    """TTFT and prefill/decode speeds from litert_lm_main's BenchmarkInfo printout (last turn)."""
    def last(pattern):
        found = re.findall(pattern, text)
        return float(found[-1]) if found else None

    out = {"ttft_ms": last(r"Time to first token:\s*([\d.]+)\s*s"),
           "prefill_tok_s": last(r"Prefill Speed:\s*([\d.]+)\s*tokens/sec"),
           "decode_tok_s": last(r"Decode Speed:\s*([\d.]+)\s*tokens/sec")}
    if out["decode_tok_s"] is None or out["prefill_tok_s"] is None:
        tail = " | ".join(text.strip().splitlines()[-3:])[:300]
        raise NanoError(f"litert_lm_main printed no benchmark speeds (last lines: {tail!r}); "
                        "use a LiteRT-LM build with --benchmark")
    if out["ttft_ms"] is not None:
        out["ttft_ms"] *= 1e3
    return out


def run_android(litertlm: str | Path, *, threads: int, prompt_lens: Sequence[int], decode_tokens: int,
                binary: str | Path | None = None, serial: str | None = None) -> dict[str, Any]:
    """Push the bundle and litert_lm_main, benchmark each prompt length on the phone's CPU."""
    adb, serial = pick_device(serial)  # the device comes first: its absence is the common case
    binary = phone_binary(binary)

    def sh(*args: str, timeout: int = 600) -> str:
        r = subprocess.run([adb, "-s", serial, *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise NanoError(f"adb {args[0]} failed on {serial}: {(r.stderr or r.stdout).strip()[:200]}")
        return r.stdout + r.stderr

    sh("shell", "mkdir", "-p", REMOTE)
    model = f"{REMOTE}/{Path(litertlm).name}"
    sh("push", str(litertlm), model, timeout=1800)
    sh("push", str(binary), f"{REMOTE}/litert_lm_main")
    sh("shell", "chmod", "755", f"{REMOTE}/litert_lm_main")
    abi = sh("shell", "getprop", "ro.product.cpu.abi").strip()
    rows = []
    for P in prompt_lens:
        cmd = (f"cd {REMOTE} && LD_LIBRARY_PATH={REMOTE} ./litert_lm_main --backend=cpu --model_path={model} "
               f"--benchmark --benchmark_prefill_tokens={P} --benchmark_decode_tokens={decode_tokens} "
               f"--num_cpu_threads={threads} --async=false")
        rows.append({"prompt_len": P, **parse_litert_lm(sh("shell", cmd))})
    return {"serial": serial, "abi": abi, "rows": rows}
