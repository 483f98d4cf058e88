"""``hybridmethod``: a method callable on a table class or on a restricted instance of it."""

from __future__ import annotations

__all__ = ["hybridmethod"]


class hybridmethod:
    """A method callable on the class (``TrainedModel.load_model(key)``) or on a restricted instance.

    On the class the method runs on an unrestricted instance (``cls()``), so ``Model.build_model(key=k)``
    and ``(Model() & k).build_model()`` do the same thing.
    """

    def __init__(self, function):
        self.function = function
        self.__doc__ = function.__doc__
        self.__wrapped__ = function

    def __get__(self, obj, objtype=None):
        target = obj if obj is not None else objtype()
        return self.function.__get__(target, objtype)
