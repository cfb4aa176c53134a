"""``lipsync-rt eval``: sync and look scores for any talking-face video, comparable with the papers.

- :mod:`.mfcc`: syncnet_python's MFCC features (python_speech_features' defaults) in numpy.
- :mod:`.scoring`: the LSE arithmetic (distances over offsets, LSE-D, LSE-C, offset, confidence), the
  off-sync accuracy and the fine A/V offset.
- :mod:`.crop`: syncnet_python's face-track crop and the expert's face box.
- :mod:`.inputs`: a video file or a preprocessed clip folder as 25 fps frames + aligned 16 kHz audio.
- :mod:`.judges`: SyncNet v2 (:mod:`lipsync_rt.models.syncnet_v2`) and the project's expert as judges.
- :mod:`.run`: judging clips and lists; :mod:`.look`: sharpness, SSIM, colour, mouth opening;
  :mod:`.report`: table, JSON, plot.

Importing this package costs nothing; torch loads with the judges.
"""
