"""``lipsync-rt`` subcommands that live in their own module (the table is in ``lipsync_rt.cli``)."""

# The ``--engine`` choices and default of every command: the engine factory's own, which it defines
# without importing torch, so building the parser stays cheap.
from ..engine.factory import DEFAULT_ENGINE, ENGINE_KINDS

ENGINE_CHOICES = ENGINE_KINDS
ENGINE_HELP = (
    "auto: the fastest faithful engine here, built once per checkpoint on first use (with a progress bar) into "
    "the engine cache (~/.cache/lipsync-rt/engines, or $LIPSYNC_RT_CACHE/engines) and reused after: int8 on "
    "the CPU (faithful: its faces stay within about one grey level RMS of the fp32 network's, 47 dB PSNR "
    "measured on the bundled model), a TensorRT fp16 plan on CUDA (torch fp16 where TensorRT is missing). "
    "torch: the reference network untouched, in fp32: the reference's frames bit for bit on the CPU. "
    "onnx, int8, tensorrt: that engine, from the same cache"
)

__all__ = ["DEFAULT_ENGINE", "ENGINE_CHOICES", "ENGINE_HELP"]
