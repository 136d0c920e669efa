"""The embedded default: synthetic scenes, documents and datasets in the real on-disk formats, the tiny model
builders, their training recipe and the standalone probe. Everything runs on CPU with no download."""
