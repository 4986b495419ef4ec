"""Export a Nano checkpoint for devices: the prefill/decode graph (`graph`), the TFLite flatbuffer
with int4/int8 weights placed bit for bit (`flatbuffer`, `tflite`), the LiteRT-LM bundle
(`litertlm`), llama.cpp's GGUF (`gguf`), the checkpoint-level driver (`checkpoint`) and the
runners of the exported files (`runtime`)."""
