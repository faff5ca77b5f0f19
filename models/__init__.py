"""Loading models: targets and drafts by name, path, hub id or layers:I,J, made ready for an
engine; the draft format; the built-in draft."""
