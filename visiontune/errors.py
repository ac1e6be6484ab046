"""Errors a user can fix; the CLI turns them into one line on stderr and exit code 2."""

__all__ = [
    "BundleError",
    "CacheError",
    "DataError",
    "ExportError",
    "TrainingDiverged",
    "VisiontuneError",
    "VisiontuneWarning",
    "WeightsNotFoundError",
]


class VisiontuneError(Exception):
    """Base for problems with the user's input, as opposed to bugs."""


class DataError(VisiontuneError):
    """The image folder is missing, empty or laid out in a way we cannot read."""


class WeightsNotFoundError(VisiontuneError):
    """No source could provide the requested backbone weights."""


class BundleError(VisiontuneError):
    """A saved model folder is missing, damaged or from an unsupported format version."""


class CacheError(VisiontuneError, ValueError):
    """A feature-cache folder or key given by the user is not one (a file, a malformed key)."""


class ExportError(VisiontuneError):
    """An exported model disagrees with the eager one, or could not be written."""


class TrainingDiverged(VisiontuneError):
    """A loss or the weights became non-finite (inf or NaN): the model is not saved."""


class VisiontuneWarning(UserWarning):
    """Base of the package's warnings; the CLI shows them as one ``visiontune: warning:`` line."""
