"""``lipsync-rt`` subcommands that live in their own module (the table is in ``lipsync_rt.cli``)."""
