"""lipsync-rt: a streaming, real-time Wav2Lip pipeline."""

__version__ = "0.1.0"
