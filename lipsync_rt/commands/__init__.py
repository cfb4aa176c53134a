"""``lipsync-rt`` subcommands that live in their own module (the table is in ``lipsync_rt.cli``)."""

# The ``--engine`` choices of every command. Kept here, free of heavy imports, so building the parser
# does not import torch; a test checks it equals ``lipsync_rt.engine.ENGINE_KINDS``.
ENGINE_CHOICES = ("auto", "torch", "onnx", "int8", "tensorrt")
ENGINE_HELP = ("auto (a matching built int8/TensorRT engine in engines/ if there is one, else torch), torch, "
               "onnx, int8 or tensorrt (built into engines/ on first use)")
