"""operando's errors: hierarchy, message format (where + problem + remedy), pickling."""

from __future__ import annotations

import pickle

import pytest

from operando import errors
from operando.errors import (
    IncompleteDatasetError,
    InputError,
    InputNotFoundError,
    OperandoError,
    OutputExistsError,
)

CLASSES = [getattr(errors, name) for name in errors.__all__]
RAISED = [c for c in CLASSES if c not in (OperandoError, InputError)]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_is_an_operando_error(cls):
    assert issubclass(cls, OperandoError)
    assert issubclass(cls, Exception)


@pytest.mark.parametrize("cls", [c for c in CLASSES if issubclass(c, InputError)], ids=lambda c: c.__name__)
def test_input_errors_are_value_errors(cls):
    assert issubclass(cls, ValueError)
    with pytest.raises(ValueError, match=r"^in\.tif: bad value"):
        raise cls("in.tif", "bad value")


def test_which_errors_are_input_errors():
    inputs = {c.__name__ for c in CLASSES if issubclass(c, InputError)}
    assert inputs == set(errors.__all__) - {"OperandoError", "IncompleteDatasetError", "RegistrationError"}
    assert issubclass(IncompleteDatasetError, RuntimeError)
    assert not issubclass(IncompleteDatasetError, ValueError)


def test_builtin_matches():
    assert issubclass(InputNotFoundError, FileNotFoundError)
    assert issubclass(OutputExistsError, FileExistsError)
    with pytest.raises(FileNotFoundError, match="no such file"):
        raise InputNotFoundError("scan.tif", "no such file")
    with pytest.raises(FileExistsError, match="exists"):
        raise OutputExistsError("out.zarr", "exists")


@pytest.mark.parametrize("cls", RAISED, ids=lambda c: c.__name__)
def test_message_is_where_problem_remedy(cls):
    err = cls("data/scan.tif", "287 frames is not a multiple of 143 energies")
    assert cls.remedy, f"{cls.__name__} has no default remedy"
    assert str(err) == f"data/scan.tif: 287 frames is not a multiple of 143 energies. {cls.remedy}"
    assert (err.where, err.problem, err.remedy) == (
        "data/scan.tif",
        "287 frames is not a multiple of 143 energies",
        cls.remedy,
    )


def test_remedy_override_and_none():
    err = errors.FrameCountError("s.tif", "bad", remedy="pass --scans 2")
    assert str(err) == "s.tif: bad. pass --scans 2"
    assert str(OperandoError("x", "broken", remedy="")) == "x: broken"
    assert str(OperandoError(3, "broken")) == "3: broken"


@pytest.mark.parametrize("cls", RAISED, ids=lambda c: c.__name__)
def test_errors_pickle_intact(cls):
    # Errors raised in dask workers are pickled to the client.
    err = cls("a.zarr", "chunk (0, 1) missing", remedy="write again")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == str(err) == "a.zarr: chunk (0, 1) missing. write again"
    assert (back.where, back.problem, back.remedy) == ("a.zarr", "chunk (0, 1) missing", "write again")
