"""The examples in the docstrings are true (they show the notebook's numbers)."""

import doctest

import pytest

import clatrous.conv
import clatrous.layers
import clatrous.reference


@pytest.mark.parametrize("module", [clatrous.conv, clatrous.layers, clatrous.reference])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
