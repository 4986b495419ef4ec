"""The runtime harness `nano bench` ships: each runtime (LiteRT CompiledModel, LiteRT-LM,
llama.cpp, a phone over adb) timed in its own child process on the same prompts."""
