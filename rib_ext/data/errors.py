"""The one exception type of the data layer."""


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or inconsistent.

    Messages name the file or image id at fault and say what is wrong with it, so a user can fix the
    dataset without reading the loader's code.
    """
