"""Exception hierarchy of clrp. Every error raised on purpose by the package derives from ClrpError."""


class ClrpError(Exception):
    """Base class of every error clrp raises on purpose."""


class DatasetError(ClrpError):
    """A dataset (folder, archive, annotation file) cannot be read or is inconsistent."""


class UnsafeArchive(DatasetError):
    """An archive was refused: path traversal, absolute path, link, or size/count/ratio limits exceeded."""


class UnsupportedModel(ClrpError):
    """The model contains a layer or a topology the engine cannot propagate through."""


class InvalidTarget(ClrpError):
    """A class index, layer name or channel that does not exist in the model."""


class InvalidInput(ClrpError):
    """Inputs of the wrong shape, dtype or device."""


class InvalidImage(ClrpError):
    """A user image was refused: not an image, truncated/corrupt, unsupported, or a decompression bomb."""


class ModelLoadError(ClrpError):
    """A model could not be built or its weights/class names/config could not be loaded."""
